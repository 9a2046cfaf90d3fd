//! Argon2id password hashing for user and room passwords.
//!
//! Parameters are OWASP's minimum for Argon2id: 19 MiB of memory, two passes,
//! one lane. Hashes are PHC strings, which carry their own parameters, so
//! verification keeps working if the parameters are raised later.
//!
//! Hashing is CPU-heavy, so it is the cheapest way to overload the service.
//! [`Hasher`] bounds it: it runs on the blocking pool with at most `workers`
//! hashes at once (one per core by default), each kind of work may have at
//! most `queue` callers waiting, and a caller waits at most `max_wait`.
//! Past either bound the answer is 503 `overloaded` with `Retry-After`
//! instead of an ever longer queue. New hashes (register, password rooms) may
//! use all workers but one, so a flood of them never delays logins and
//! joins, which only verify, by more than one worker's share of the CPU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::ApiError;

/// Memory cost in KiB (19 MiB).
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Number of passes.
pub const ITERATIONS: u32 = 2;
/// Degree of parallelism.
pub const LANES: u32 = 1;

fn hasher() -> Argon2<'static> {
    let params =
        Params::new(MEMORY_KIB, ITERATIONS, LANES, None).expect("argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string (synchronously).
pub fn hash_blocking(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(hasher()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against a PHC string (synchronously). A malformed hash
/// never matches.
pub fn verify_blocking(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password with the same parameters as real ones. Logins
/// for unknown users are verified against it, so they take as long as logins
/// for real users with a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = uuid::Uuid::new_v4().to_string();
        hash_blocking(&random).expect("hashing a random password cannot fail")
    })
}

/// The number of cores, at least 1: the default number of hashing workers.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Limits of the hashing work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLimits {
    /// Hashes that run at once (`CONFAB_HASH_WORKERS`, default: the cores).
    pub workers: usize,
    /// Callers of one kind (new hashes, verifications) allowed to wait for a
    /// worker (`CONFAB_HASH_QUEUE`, default 32).
    pub queue: usize,
    /// The longest a caller waits for a worker (`CONFAB_HASH_WAIT_MS`,
    /// default 5000).
    pub max_wait: Duration,
}

/// What a hash is for: verifications (login, join) and new hashes (register,
/// password rooms) queue separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Verify = 0,
    New = 1,
}

/// Runs password hashing within [`HashLimits`]; shared by every request.
#[derive(Debug)]
pub struct Hasher {
    /// One permit per worker.
    workers: Arc<Semaphore>,
    /// New hashes also take one of these: all workers but one.
    new_hashes: Arc<Semaphore>,
    /// The size of `new_hashes`.
    new_permits: usize,
    /// Callers of each [`Kind`] waiting or running.
    in_flight: [AtomicUsize; 2],
    limits: HashLimits,
}

/// Gives back an in-flight slot when the caller is done or gone.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hasher {
    pub fn new(limits: HashLimits) -> Self {
        let workers = limits.workers.max(1);
        let new_permits = workers.saturating_sub(1).max(1);
        Self {
            workers: Arc::new(Semaphore::new(workers)),
            new_hashes: Arc::new(Semaphore::new(new_permits)),
            new_permits,
            in_flight: [AtomicUsize::new(0), AtomicUsize::new(0)],
            limits: HashLimits { workers, ..limits },
        }
    }

    /// Runs `work` on the blocking pool once a worker is free, or fails with
    /// 503 when the queue is full or the wait too long.
    async fn run<T: Send + 'static>(
        &self,
        kind: Kind,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let counter = &self.in_flight[kind as usize];
        let runners = match kind {
            Kind::Verify => self.limits.workers,
            Kind::New => self.new_permits,
        };
        let cap = self.limits.queue + runners;
        if counter.fetch_add(1, Ordering::AcqRel) >= cap {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded(kind));
        }
        let _slot = Slot(counter);
        let acquire = async {
            let gate = match kind {
                Kind::New => Some(self.new_hashes.clone().acquire_owned().await),
                Kind::Verify => None,
            };
            let worker = self.workers.clone().acquire_owned().await;
            (gate, worker)
        };
        let (gate, worker) = tokio::time::timeout(self.limits.max_wait, acquire)
            .await
            .map_err(|_| overloaded(kind))?;
        let gate = gate.transpose().map_err(ApiError::internal)?;
        let worker = worker.map_err(ApiError::internal)?;
        // The permits move into the blocking task: a caller that goes away
        // does not free a worker that is still hashing.
        tokio::task::spawn_blocking(move || {
            let _permits = (gate, worker);
            work()
        })
        .await
        .map_err(ApiError::internal)
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(Kind::New, move || hash_blocking(&password))
            .await?
            .map_err(ApiError::internal)
    }

    /// Verifies a password. With `phc = None` (no such user) it verifies
    /// against [`dummy_hash`] and returns false, taking the same time.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, ApiError> {
        self.run(Kind::Verify, move || match phc {
            Some(phc) => verify_blocking(&password, &phc),
            None => {
                let _ = verify_blocking(&password, dummy_hash());
                false
            }
        })
        .await
    }
}

fn overloaded(kind: Kind) -> ApiError {
    let kind = match kind {
        Kind::Verify => "verify",
        Kind::New => "new",
    };
    metrics::counter!("confab_api_hash_rejected_total", "kind" => kind).increment(1);
    ApiError::overloaded()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_phc_with_owasp_parameters() {
        let phc = hash_blocking("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_blocking("correct horse", &phc));
        assert!(!verify_blocking("wrong horse", &phc));
        assert!(!verify_blocking("correct horse", "not a phc string"));
        // Salted: the same password hashes differently.
        assert_ne!(phc, hash_blocking("correct horse").unwrap());
    }

    fn limits(workers: usize, queue: usize) -> HashLimits {
        HashLimits {
            workers,
            queue,
            max_wait: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn unknown_users_never_verify() {
        let h = Hasher::new(limits(2, 4));
        assert!(!h.verify("anything".into(), None).await.unwrap());
        assert!(dummy_hash().starts_with("$argon2id$"));
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_and_verifications_keep_a_worker() {
        let h = Arc::new(Hasher::new(limits(2, 1)));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(std::sync::Mutex::new(wait));
        // One new hash runs (all workers but one), one waits: the queue of 1 is full.
        let blocked: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                let wait = wait.clone();
                tokio::spawn(async move {
                    h.run(Kind::New, move || {
                        let _ = wait.lock().unwrap().recv();
                    })
                    .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = h.run(Kind::New, || ()).await.unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        // A verification still gets the worker new hashes may not take.
        assert!(!h.verify("x".into(), None).await.unwrap());
        release.send(()).unwrap();
        release.send(()).unwrap();
        for b in blocked {
            b.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn waiting_longer_than_max_wait_is_refused() {
        let h = Arc::new(Hasher::new(HashLimits {
            workers: 1,
            queue: 8,
            max_wait: Duration::from_millis(50),
        }));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let holder = {
            let h = h.clone();
            tokio::spawn(async move {
                h.run(Kind::Verify, move || {
                    let _ = wait.recv();
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = h.run(Kind::Verify, || ()).await.unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
    }
}

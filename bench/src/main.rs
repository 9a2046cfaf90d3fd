//! `confab-bench`: load and latency measurements against a running Confab stack.

fn main() {
    eprintln!("confab-bench: not implemented yet");
    std::process::exit(2);
}

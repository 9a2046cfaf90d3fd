//! Property tests of the frame decoder ([`decode_commands`]): whatever a
//! client sends, decoding never panics, never recurses with the input's
//! nesting depth, and yields at most [`MAX_COMMANDS_PER_FRAME`] commands.
//!
//! JSON frames carry no declared lengths, so what the decoder allocates is
//! bounded by the frame itself (at most 64 KiB, enforced before decoding) and
//! by the command cap. Cases per property: `PROPTEST_CASES`, default 256, so
//! the run stays within a few seconds in CI.

use proptest::prelude::*;

use super::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// The largest frame the gateway reads (larger ones close with 1009).
const MAX_FRAME: usize = 64 * 1024;

/// Decodes `frame` on a thread with a small stack: deep nesting must not
/// recurse, so 256 KiB of stack is plenty for any frame.
fn decode_on_small_stack(frame: Vec<u8>) -> Result<usize, String> {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            decode_commands(&frame)
                .map(|cmds| cmds.len())
                .map_err(|e| e.to_string())
        })
        .expect("spawn decoder thread")
        .join()
        .expect("the decoder panicked or overflowed its stack")
}

fn non_blank_lines(frame: &[u8]) -> usize {
    String::from_utf8_lossy(frame)
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn check(frame: Vec<u8>) -> Result<(), TestCaseError> {
    let lines = non_blank_lines(&frame);
    if let Ok(n) = decode_on_small_stack(frame) {
        prop_assert!(n <= MAX_COMMANDS_PER_FRAME, "{n} commands");
        prop_assert!(n <= lines, "{n} commands from {lines} lines");
    }
    Ok(())
}

/// JSON values of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("99999999999999999999999999")),
        Just(Value::from("-1")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map(field_name(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names of the protocol, and some others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id",
            "connect",
            "subscribe",
            "unsubscribe",
            "publish",
            "presence",
            "presence_stats",
            "history",
            "ping",
            "send",
            "rpc",
            "refresh",
            "sub_refresh",
            "token",
            "channel",
            "data",
            "recover",
            "epoch",
            "offset",
            "since",
            "limit",
            "reverse",
            "positioned",
            "recoverable",
            "join_leave",
            "name",
            "version",
            "text",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{0,12}",
    ]
}

/// A command: an object with an id and protocol fields of any value.
fn command() -> impl Strategy<Value = String> {
    (
        any::<u32>(),
        prop::collection::btree_map(field_name(), any_json(), 0..4),
    )
        .prop_map(|(id, fields)| {
            let mut object: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().collect();
            object.insert("id".into(), id.into());
            serde_json::Value::Object(object).to_string()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(frame in prop::collection::vec(any::<u8>(), 0..4096)) {
        check(frame)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,2048}") {
        check(text.into_bytes())?;
    }

    #[test]
    fn generated_commands_never_panic(lines in prop::collection::vec(command(), 0..300)) {
        let frame = lines.join("\n").into_bytes();
        prop_assume!(frame.len() <= MAX_FRAME);
        check(frame)?;
    }

    #[test]
    fn mutated_commands_never_panic(
        lines in prop::collection::vec(command(), 1..20),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
    ) {
        let mut frame = lines.join("\n").into_bytes();
        for (at, byte) in cuts {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        check(frame)?;
    }

    #[test]
    fn deep_nesting_fills_a_frame_without_recursing(
        depth in 1usize..(MAX_FRAME / 2 - 64),
        open in prop::sample::select(vec!["[", "{\"a\":"]),
        field in prop::sample::select(vec!["ping", "rpc", "send", "subscribe", "publish", "history"]),
    ) {
        let depth = depth.min((MAX_FRAME - 64) / (open.len() + 1));
        let close = if open == "[" { "]" } else { "}" };
        let nested = format!("{}{}", open.repeat(depth), close.repeat(depth));
        let frame = match field {
            "publish" => format!("{{\"id\":1,\"publish\":{{\"channel\":\"room:x\",\"data\":{nested}}}}}"),
            "history" => format!("{{\"id\":1,\"history\":{{\"channel\":\"room:x\",\"since\":{nested}}}}}"),
            f => format!("{{\"id\":1,\"{f}\":{nested}}}"),
        };
        check(frame.into_bytes())?;
    }

    #[test]
    fn many_lines_are_capped(n in 0usize..2000) {
        let frame = "{\"id\":1,\"ping\":{}}\n".repeat(n).into_bytes();
        let result = decode_on_small_stack(frame);
        if n <= MAX_COMMANDS_PER_FRAME {
            prop_assert_eq!(result, Ok(n));
        } else {
            prop_assert!(result.is_err());
        }
    }
}

//! The words of every kind of failed call: what dead letters and logs said before the failures
//! were typed, byte for byte.

use std::time::Duration;

use wasmtime::Trap;

use super::sandbox::MemoryRefusal;
use super::{CallError, CallFailure, PluginKind};

fn text(kind: CallFailure) -> String {
    kind.to_string()
}

#[test]
fn each_kind_reads_as_before() {
    assert_eq!(
        text(CallFailure::Deadline {
            timeout: Duration::from_millis(1500)
        }),
        "deadline exceeded: the call ran longer than 1.5s"
    );
    assert_eq!(
        text(CallFailure::MemoryLimit(MemoryRefusal {
            in_use: 900,
            requested: 200,
            max: 1000,
        })),
        "memory limit exceeded: the instance held 900 bytes and asked for 200 more, above its limit of 1000 bytes (the stage's `max_memory_bytes`)"
    );
    assert_eq!(
        text(CallFailure::MemoryGrowth {
            limit: 1024,
            error: "cannot grow".into()
        }),
        "memory limit of 1024 bytes exceeded: cannot grow"
    );
    assert_eq!(
        text(CallFailure::Panic {
            message: "boom (at src/lib.rs:3:5)".into()
        }),
        "panic: boom (at src/lib.rs:3:5)"
    );
    let trap = Trap::IntegerDivisionByZero;
    assert_eq!(
        text(CallFailure::Trap {
            code: trap,
            stderr: None
        }),
        format!("trap: {trap}")
    );
    assert_eq!(
        text(CallFailure::Trap {
            code: trap,
            stderr: Some("last words".into())
        }),
        format!("trap: {trap} (last words)")
    );
    assert_eq!(
        text(CallFailure::InvalidOutput {
            what: "a record for event 3 of a batch of 2".into()
        }),
        "invalid output: a record for event 3 of a batch of 2"
    );
    assert_eq!(
        text(CallFailure::Instantiation {
            error: "start-up failed".into()
        }),
        "start-up failed"
    );
    assert_eq!(
        text(CallFailure::Other {
            error: "something else".into()
        }),
        "something else"
    );
    assert_eq!(
        text(CallFailure::WrongKind {
            kind: PluginKind::Transform
        }),
        "a Transform plugin was called for a function of another kind of stage"
    );
}

#[test]
fn a_call_error_names_the_plugin_and_says_whether_to_retry() {
    let error = CallError {
        plugin: "anomaly".into(),
        version: "abc123".into(),
        kind: CallFailure::Deadline {
            timeout: Duration::from_secs(5),
        },
    };
    assert_eq!(
        error.to_string(),
        "plugin anomaly version abc123 trapped: deadline exceeded: the call ran longer than 5s"
    );
    assert!(error.retryable());
    let panic = CallError {
        kind: CallFailure::Panic {
            message: "boom".into(),
        },
        ..error
    };
    assert!(!panic.retryable());
}

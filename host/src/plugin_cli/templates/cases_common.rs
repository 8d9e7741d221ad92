
// ---- The test cases of `cases/`, run natively (`weir plugin test` runs them through the host).

/// One line of a case's `input.jsonl`.
#[derive(serde::Deserialize)]
struct InputLine {
    /// Event time, in milliseconds since the epoch.
    #[serde(default)]
    time: i64,
    /// Partition key.
    #[serde(default)]
    key: Option<String>,
    /// For a join: which input the event comes to, `left` or `right`.
    #[serde(default)]
    #[allow(dead_code)] // read by a join's tests only
    side: Option<String>,
    /// The event's body.
    body: serde_json::Value,
}

impl InputLine {
    fn event(&self) -> TestEvent {
        let event = TestEvent::json(&self.body).at(self.time);
        match &self.key {
            Some(key) => event.key(key.clone()),
            None => event,
        }
    }
}

/// What a case produced: records per output (`dead-letters` included), each a JSON value.
type Outputs = std::collections::BTreeMap<String, Vec<serde_json::Value>>;

/// Every case directory under `cases/`.
fn cases() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    cases
}

/// The lines of a JSONL file, each parsed.
fn jsonl<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Vec<T> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", path.display(), n + 1))
        })
        .collect()
}

/// A case's expected records per output: one `expected/<output>.jsonl` file each.
fn expected(case: &std::path::Path) -> Outputs {
    let dir = case.join("expected");
    let mut outputs = Outputs::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|ext| ext == "jsonl") {
            let output = path.file_stem().expect("a file name").to_string_lossy().into_owned();
            let records: Vec<serde_json::Value> = jsonl(&path);
            if !records.is_empty() {
                outputs.insert(output, records);
            }
        }
    }
    outputs
}

/// The stage's `config` table of a case (`case.toml`), as JSON.
fn case_config(case: &std::path::Path) -> serde_json::Value {
    let path = case.join("case.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match table.get("config") {
        Some(config) => serde_json::to_value(config).expect("TOML is JSON"),
        None => serde_json::json!({}),
    }
}

/// Adds `records` of `output` (parsed from the outcome's JSON) to `outputs`.
fn collect(outputs: &mut Outputs, outcome: &weir_sdk::testing::Outcome, names: &[&str]) {
    for name in names {
        let records = outcome.json(name);
        if !records.is_empty() {
            outputs.entry((*name).to_owned()).or_default().extend(records);
        }
    }
}

/// A dead letter as `expected/dead-letters.jsonl` holds it: the input line (from 1) and reason.
fn dead_letter(line: usize, reason: &str) -> serde_json::Value {
    serde_json::json!({ "input": line, "reason": reason })
}

#[test]
fn the_cases_give_their_expected_outputs() {
    let cases = cases();
    assert!(!cases.is_empty(), "no case under cases/");
    for case in cases {
        let input: Vec<InputLine> = jsonl(&case.join("input.jsonl"));
        let got = run_case(&input, case_config(&case));
        let mut want = expected(&case);
        // Fields the host's stage adds to every record (`weir plugin test` checks them).
        for record in want.values_mut().flatten() {
            if let Some(fields) = record.as_object_mut() {
                fields.retain(|field, _| !HOST_FIELDS.contains(&field.as_str()));
            }
        }
        assert_eq!(got, want, "case {}", case.display());
    }
}

#[test]
fn alerts_on_a_jump() {
    let mut harness = weir_sdk::testing::Harness::new(process);
    harness.run(r#"{"DeviceId":"d1","Temperature":20.0}"#);
    let outcome = harness.run(r#"{"DeviceId":"d1","Temperature":40.0}"#);
    assert_eq!(outcome.json("alerts").len(), 1);
}

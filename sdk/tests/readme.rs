//! The plugin and the test the README shows, compiled and run here, so that the README stays true
//! for someone who writes their first plugin from it.

mod plugin {
    include!("readme/plugin.rs");

    mod harness_test {
        use super::*;
        include!("readme/test.rs");
    }
}

#[test]
fn the_readme_shows_exactly_these_files() {
    let readme = include_str!("../../README.md");
    for file in [
        include_str!("readme/plugin.rs"),
        include_str!("readme/test.rs"),
        include_str!("readme/time.rs"),
    ] {
        assert!(
            readme.contains(file.trim()),
            "README.md must contain, verbatim:\n{file}"
        );
    }
}

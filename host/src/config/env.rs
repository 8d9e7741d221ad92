//! Environment variables in configuration values.

/// Replaces every `${NAME}` in `value` by the environment variable `NAME` (empty when unset).
pub fn expand_env(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push_str(&std::env::var(&after[..end]).unwrap_or_default());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_are_expanded() {
        // PATH is set in every test environment; an unknown variable expands to nothing.
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(expand_env("a${PATH}b"), format!("a{path}b"));
        assert_eq!(expand_env("${WEIR_SURELY_UNSET_VARIABLE}x"), "x");
        assert_eq!(expand_env("no ${ closing"), "no ${ closing");
    }
}

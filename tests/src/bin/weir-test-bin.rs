//! The `weir` command line, built inside the test package so that integration tests can run it as
//! a process (and kill it) through `CARGO_BIN_EXE_weir-test-bin`.

fn main() -> std::process::ExitCode {
    weir::cli::main()
}

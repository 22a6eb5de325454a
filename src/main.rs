//! The `coda` binary: parse, dispatch, exit with a meaningful code.

fn main() {
    std::process::exit(coda::cmd::main());
}

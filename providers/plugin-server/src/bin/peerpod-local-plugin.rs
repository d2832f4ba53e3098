//! Example: the `local` provider served as a provider plugin. TODO after base rebase: use local's cli::Args.
fn main() {}

//! `peerpod-ctrl`: the controller's command (`peerpod_ctrl::cli`).

fn main() -> anyhow::Result<()> {
    peerpod_ctrl::cli::main()
}

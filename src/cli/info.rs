//! `saescope info`: the machine as saescope sees it, as text or JSON.

use clap::Args;
use saescope::machine::MachineInfo;

#[derive(Args)]
pub struct InfoArgs {
    /// Print the record as JSON (what benchmark records store).
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let info = MachineInfo::collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{info}");
    }
    Ok(())
}

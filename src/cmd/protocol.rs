//! `coda protocol schema`: the JSON Schema of the wire protocol.

use clap::Subcommand;

/// `coda protocol ...`
#[derive(Debug, Subcommand)]
pub enum ProtocolCommand {
    /// Print the JSON Schema of the envelope, every event payload and every command.
    Schema,
}

/// `coda protocol ...`
pub fn run(cmd: ProtocolCommand) -> anyhow::Result<()> {
    match cmd {
        ProtocolCommand::Schema => {
            let schema = coda_protocol::schema::schema_json();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}

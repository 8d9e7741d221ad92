//! Hostile plugin: on every event, tries to open a TCP connection to the stage's `address`
//! setting. A connection that opens is reported on output `leak`; if the sandbox holds, the
//! attempt fails and the event is rejected with the error.

use weir_sdk::prelude::*;

#[derive(Clone, Deserialize)]
struct Settings {
    address: String,
}

/// Tries to connect.
#[weir_sdk::transform]
pub fn process(_event: &Event, ctx: &mut Context) -> Result<()> {
    let settings: Settings = ctx.config()?;
    match std::net::TcpStream::connect(settings.address.as_str()) {
        Ok(_) => {
            ctx.emit("leak", &format!("connected to {}", settings.address))?;
            Ok(())
        }
        Err(error) => Err(Error::reject(format!(
            "cannot connect to {}: {error}",
            settings.address
        ))),
    }
}

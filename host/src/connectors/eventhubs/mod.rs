//! Azure Event Hubs (and IoT Hub's Event Hubs-compatible endpoint): a hub read partition by
//! partition, and a hub written to; both over one AMQP connection code.

pub mod config;

#[cfg(feature = "eventhubs")]
pub(crate) mod connection;
#[cfg(feature = "eventhubs")]
pub mod sink;
#[cfg(feature = "eventhubs")]
pub mod source;

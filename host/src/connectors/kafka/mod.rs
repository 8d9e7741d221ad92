//! Kafka: a topic read partition by partition, and a topic written to; both through one client
//! (TLS, SASL) built from [`config::KafkaConnection`].

pub mod config;

#[cfg(feature = "kafka")]
pub(crate) mod client;
#[cfg(feature = "kafka")]
pub mod sink;
#[cfg(feature = "kafka")]
pub mod source;

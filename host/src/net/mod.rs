//! What the admin API and the HTTP source share on the network: TLS whose certificate is read
//! again when its files change, the rule that plain HTTP is refused on an address other than
//! loopback unless the configuration allows it, and a server that bounds its connections and the
//! time a client may take to send a request's head.

pub mod config;
mod serve;
pub mod tls;

pub use config::{ListenerConfig, TlsConfig};
pub use serve::{ServeOptions, serve};

/// Whether `address` (`host:port`) is a loopback address: `127.0.0.0/8`, `::1` or `localhost`.
pub fn is_loopback(address: &str) -> bool {
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return socket.ip().is_loopback();
    }
    address
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.1:80"));
        assert!(is_loopback("127.1.2.3:0"));
        assert!(is_loopback("[::1]:9464"));
        assert!(is_loopback("localhost:8080"));
        assert!(!is_loopback("0.0.0.0:8080"));
        assert!(!is_loopback("10.0.0.4:8080"));
        assert!(!is_loopback("[::]:8080"));
        assert!(!is_loopback("example.com:80"));
    }
}

//! `swarm init` options from the seeds (advertise address or interface, default address
//! pool of at least /24, data path port), validated before anything touches the engine.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The default VXLAN data path port, which collides with VMware NSX.
pub const VXLAN_PORT: u16 = 4789;

/// Validated init options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// IP address or interface name to advertise.
    pub advertise: Option<String>,
    /// Default address pools (CIDR, prefix length at most 24).
    pub pools: Vec<String>,
    /// Data path (VXLAN) port.
    pub data_path_port: Option<u16>,
}

/// Parse an IPv4 CIDR and return its prefix length.
fn cidr_prefix(cidr: &str) -> Result<u8> {
    let (ip, len) = cidr
        .split_once('/')
        .with_context(|| format!("address pool {cidr:?}: expected A.B.C.D/N"))?;
    ip.parse::<std::net::Ipv4Addr>()
        .with_context(|| format!("address pool {cidr:?}: {ip:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("address pool {cidr:?}: bad prefix length"))?;
    if len > 32 {
        bail!("address pool {cidr:?}: prefix length above 32");
    }
    Ok(len)
}

impl InitOptions {
    /// Check the options; returns warnings to show (e.g. the NSX port clash).
    pub fn validate(&self) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        for p in &self.pools {
            let len = cidr_prefix(p)?;
            if len > 24 {
                bail!("address pool {p}: smaller than /24 (each overlay network takes a /24 from the pool)");
            }
        }
        match self.data_path_port {
            Some(p) if !(1024..=49151).contains(&p) => {
                bail!("data path port {p}: must be between 1024 and 49151")
            }
            Some(VXLAN_PORT) | None => warnings.push(format!(
                "data path port {VXLAN_PORT} (the VXLAN default) may conflict with VMware NSX; choose another with --data-path-port if the hosts run on NSX"
            )),
            _ => {}
        }
        if let Some(a) = &self.advertise {
            if a.is_empty() || a.contains(char::is_whitespace) {
                bail!("advertise address {a:?}: expected an IP address or an interface name");
            }
        }
        Ok(warnings)
    }

    /// The `SwarmInitRequest` JSON.
    pub fn request(&self) -> Value {
        let mut v = json!({"ListenAddr": "0.0.0.0:2377", "ForceNewCluster": false});
        if let Some(a) = &self.advertise {
            v["AdvertiseAddr"] = json!(a);
        }
        if !self.pools.is_empty() {
            v["DefaultAddrPool"] = json!(self.pools);
            v["SubnetSize"] = json!(24);
        }
        if let Some(p) = self.data_path_port {
            v["DataPathPort"] = json!(p);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pool: &str, port: Option<u16>) -> InitOptions {
        InitOptions {
            advertise: Some("eth0".into()),
            pools: vec![pool.into()],
            data_path_port: port,
        }
    }

    #[test]
    fn pools_smaller_than_24_are_rejected() {
        assert!(opts("192.168.120.0/24", Some(4790))
            .validate()
            .unwrap()
            .is_empty());
        assert!(opts("10.0.0.0/16", Some(4790)).validate().is_ok());
        let e = opts("192.168.120.0/25", None)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("smaller than /24"), "{e}");
        assert!(opts("nonsense", None).validate().is_err());
    }

    #[test]
    fn nsx_port_warns() {
        let w = opts("10.0.0.0/16", Some(4789)).validate().unwrap();
        assert!(w[0].contains("NSX"));
        assert!(opts("10.0.0.0/16", Some(80)).validate().is_err());
    }

    #[test]
    fn request_json() {
        let r = opts("192.168.120.0/24", Some(4790)).request();
        assert_eq!(r["AdvertiseAddr"], "eth0");
        assert_eq!(r["DataPathPort"], 4790);
        assert_eq!(r["DefaultAddrPool"][0], "192.168.120.0/24");
    }
}

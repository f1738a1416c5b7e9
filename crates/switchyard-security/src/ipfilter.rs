//! Allow and deny lists of networks (IPv4 and IPv6 CIDR).
//!
//! Deny wins: an address in `deny` is refused even if `allow` contains it. A
//! non-empty `allow` refuses every address outside it.

use std::net::IpAddr;

use ipnet::IpNet;

/// An allow/deny list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpFilter {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It is in this `deny` network.
    Denied(IpNet),
    /// `allow` is set and it is in none of those networks.
    NotAllowed,
}

impl IpFilter {
    /// Whether the list filters nothing.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Checks `ip`; IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are
    /// checked as the IPv4 address they carry.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if let Some(net) = self.deny.iter().find(|net| net.contains(&ip)) {
            return Err(Refusal::Denied(*net));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        IpFilter {
            allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
            deny: deny.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn deny_wins_over_allow() {
        let f = filter(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert_eq!(f.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(
            f.check(ip("10.9.1.1")),
            Err(Refusal::Denied("10.9.0.0/16".parse().unwrap()))
        );
        assert_eq!(f.check(ip("192.168.1.1")), Err(Refusal::NotAllowed));
    }

    #[test]
    fn deny_only_lets_the_rest_in_and_ipv6_works() {
        let f = filter(&[], &["2001:db8::/32", "192.0.2.7/32"]);
        assert!(f.check(ip("2001:db8::1")).is_err());
        assert!(f.check(ip("2001:db9::1")).is_ok());
        assert!(f.check(ip("192.0.2.7")).is_err());
        assert!(f.check(ip("192.0.2.8")).is_ok());
        assert!(IpFilter::default().check(ip("1.2.3.4")).is_ok());
        assert!(IpFilter::default().is_empty());
    }

    #[test]
    fn mapped_ipv4_is_checked_as_ipv4() {
        let f = filter(&["127.0.0.0/8"], &[]);
        assert!(f.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(f.check(ip("::ffff:10.0.0.1")).is_err());
    }
}

//! Finding the addresses this node publishes, when the Corefile does not name them.
//!
//! The best guess is the local address of the route to etcd: it is the address other nodes of the
//! cluster can reach this one at, on the network that matters. When that route is local (etcd on
//! this very machine), the original plugin's rule applies: the first interface that is up and not a
//! loopback, with an IPv4 address. Either way the IPv6 address is a global one on the same interface.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::config::Listen;
use crate::sys::{interfaces, Interface};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// For messages: `10.0.0.3, fd00::3`.
impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ipv4, self.ipv6) {
            (None, None) => f.write_str("no address"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (Some(v4), Some(v6)) => write!(f, "{v4}, {v6}"),
        }
    }
}

pub fn detect(endpoints: &[String]) -> Addresses {
    let interfaces = interfaces();
    let routed = endpoints.iter().find_map(|e| Some((e, route_source(e)?)));
    if let Some((endpoint, ip)) = routed.filter(|(_, ip)| !ip.is_loopback()) {
        if let Some(iface) = interfaces.iter().find(|i| i.address == ip) {
            log::debug!("address: the route to etcd at {endpoint} leaves from {ip} on {}: its addresses", iface.name);
            return on_interface(&interfaces, &iface.name);
        }
        log::debug!("address: the route to etcd at {endpoint} leaves from {ip}");
        return from_ip(ip);
    }
    let first = interfaces.iter().find(|i| i.up && !i.loopback && i.address.is_ipv4());
    match (first, routed) {
        (Some(iface), _) => {
            log::debug!(
                "address: etcd is reached over loopback (or not at all): the first interface up, {}",
                iface.name
            );
            on_interface(&interfaces, &iface.name)
        }
        (None, Some((endpoint, ip))) => {
            log::debug!("address: no interface but loopback is up: the route to etcd at {endpoint}, {ip}");
            from_ip(ip)
        }
        (None, None) => Addresses::default(),
    }
}

/// Every address of every interface of this machine.
pub fn local_addresses() -> Vec<IpAddr> {
    interfaces().into_iter().map(|i| i.address).collect()
}

/// `bind ADDR|INTERFACE…` names an interface this machine has no IP address on.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownInterface {
    pub name: String,
    /// The interfaces there are with an address to listen on.
    pub known: Vec<String>,
}

impl fmt::Display for UnknownInterface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bind {}: this machine has no interface of that name with an address to listen on", self.name)?;
        match self.known.is_empty() {
            true => Ok(()),
            false => write!(f, " (those with one: {})", self.known.join(", ")),
        }
    }
}

impl std::error::Error for UnknownInterface {}

/// The addresses to listen on for `bind`'s words, each once; empty (every address) when `bind`
/// was not given. An interface stands for every address it has now, IPv4 and IPv6.
pub fn listen_addresses(listen: &[Listen]) -> Result<Vec<IpAddr>, UnknownInterface> {
    match listen.iter().any(|l| matches!(l, Listen::Interface(_))) {
        true => resolve(listen, &interfaces()),
        false => resolve(listen, &[]),
    }
}

/// IPv6 link-local addresses are left out: they cannot be bound without the interface's scope,
/// and no peer asks there.
fn resolve(listen: &[Listen], interfaces: &[Interface]) -> Result<Vec<IpAddr>, UnknownInterface> {
    let usable = |i: &&Interface| !matches!(i.address, IpAddr::V6(v6) if is_link_local_v6(v6));
    let mut addresses: Vec<IpAddr> = Vec::new();
    for word in listen {
        let found: Vec<IpAddr> = match word {
            Listen::Address(ip) => vec![*ip],
            Listen::Interface(name) => {
                let found: Vec<IpAddr> =
                    interfaces.iter().filter(usable).filter(|i| i.name == *name).map(|i| i.address).collect();
                if found.is_empty() {
                    let mut known: Vec<String> = Vec::new();
                    for i in interfaces.iter().filter(usable) {
                        if !known.contains(&i.name) {
                            known.push(i.name.clone());
                        }
                    }
                    return Err(UnknownInterface { name: name.clone(), known });
                }
                found
            }
        };
        for ip in found {
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    Ok(addresses)
}

fn from_ip(ip: IpAddr) -> Addresses {
    match ip {
        IpAddr::V4(v4) => Addresses { ipv4: Some(v4), ipv6: None },
        IpAddr::V6(v6) => Addresses { ipv4: None, ipv6: Some(v6) },
    }
}

/// The interface's first IPv4 address and first global IPv6 address.
fn on_interface(interfaces: &[Interface], name: &str) -> Addresses {
    let mut found = Addresses::default();
    for iface in interfaces.iter().filter(|i| i.name == name) {
        match iface.address {
            IpAddr::V4(v4) if found.ipv4.is_none() => found.ipv4 = Some(v4),
            IpAddr::V6(v6) if found.ipv6.is_none() && is_global_v6(v6) => found.ipv6 = Some(v6),
            _ => {}
        }
    }
    found
}

/// Not loopback, not link-local, not multicast; unique-local addresses count, clusters use them.
fn is_global_v6(ip: Ipv6Addr) -> bool {
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || is_link_local_v6(ip))
}

fn is_link_local_v6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The local address the kernel would send from to reach the endpoint. Connecting a UDP socket
/// sends nothing; it only picks the route.
fn route_source(endpoint: &str) -> Option<IpAddr> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let target = authority.to_socket_addrs().ok()?.next()?;
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_a_list() {
        let (v4, v6) = (Some("10.0.0.3".parse().unwrap()), Some("fd00::3".parse().unwrap()));
        for (ipv4, ipv6, text) in
            [(None, None, "no address"), (v4, None, "10.0.0.3"), (None, v6, "fd00::3"), (v4, v6, "10.0.0.3, fd00::3")]
        {
            assert_eq!(Addresses { ipv4, ipv6 }.to_string(), text);
        }
    }

    fn iface(name: &str, up: bool, loopback: bool, address: &str) -> Interface {
        Interface { name: name.into(), up, loopback, address: address.parse().unwrap() }
    }

    #[test]
    fn picks_the_interfaces_ipv4_and_global_ipv6() {
        let list = [
            iface("lo", true, true, "127.0.0.1"),
            iface("eth0", true, false, "fe80::1"),
            iface("eth0", true, false, "10.0.0.3"),
            iface("eth0", true, false, "fd00::3"),
            iface("eth0", true, false, "10.0.0.4"),
            iface("eth1", true, false, "192.168.1.2"),
        ];
        let got = on_interface(&list, "eth0");
        assert_eq!(got, Addresses { ipv4: Some("10.0.0.3".parse().unwrap()), ipv6: Some("fd00::3".parse().unwrap()) });
    }

    #[test]
    fn bind_words_become_addresses() {
        let list = [
            iface("lo", true, true, "127.0.0.1"),
            iface("lo", true, true, "::1"),
            iface("eth0", true, false, "10.0.0.3"),
            iface("eth0", true, false, "fe80::3"),
            iface("eth0", true, false, "fd00::3"),
            iface("eth0", true, false, "10.0.0.4"),
        ];
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let word = |text: &str| match text.parse::<IpAddr>() {
            Ok(ip) => Listen::Address(ip),
            Err(_) => Listen::Interface(text.to_string()),
        };
        let words = |texts: &[&str]| texts.iter().map(|t| word(t)).collect::<Vec<_>>();
        for (given, want) in [
            (&[][..], &[][..]),
            (&["lo"], &["127.0.0.1", "::1"]),
            (&["eth0"], &["10.0.0.3", "fd00::3", "10.0.0.4"]),
            (&["10.0.0.9", "lo"], &["10.0.0.9", "127.0.0.1", "::1"]),
            (&["127.0.0.1", "lo", "lo"], &["127.0.0.1", "::1"]),
        ] {
            let want: Vec<IpAddr> = want.iter().map(|t| ip(t)).collect();
            assert_eq!(resolve(&words(given), &list), Ok(want), "{given:?}");
        }
        let err = resolve(&words(&["lo", "eth9"]), &list).unwrap_err();
        assert_eq!(err.to_string(), "bind eth9: this machine has no interface of that name with an address to listen on (those with one: lo, eth0)");
        // Only a link-local address: nothing to bind.
        let err = resolve(&words(&["wg0"]), &[iface("wg0", true, false, "fe80::1")]).unwrap_err();
        assert_eq!(err, UnknownInterface { name: "wg0".into(), known: vec![] });
        assert_eq!(listen_addresses(&words(&["lo"])).map(|a| a.contains(&ip("127.0.0.1"))), Ok(true));
    }

    #[test]
    fn global_ipv6() {
        for (ip, want) in [
            ("fd00::3", true),
            ("2001:db8::1", true),
            ("fe80::1", false),
            ("febf::1", false),
            ("::1", false),
            ("ff02::1", false),
        ] {
            assert_eq!(is_global_v6(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn routes_to_a_local_endpoint_from_loopback() {
        assert_eq!(route_source("http://127.0.0.1:2379"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            route_source("http://[::1]:2379/"),
            "::1".parse().ok().filter(|_| UdpSocket::bind("[::1]:0").is_ok())
        );
    }

    #[test]
    fn this_machine_has_interfaces() {
        assert!(interfaces().iter().any(|i| i.loopback && i.address == IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}

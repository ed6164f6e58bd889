//! Where a key may be sent: the egress guard against server-side request forgery. An instance's
//! endpoint is user input, so without a guard a user could point it at the cloud metadata
//! service or an internal admin port and have the registry call it.
//!
//! The guard checks the address a connection is actually made to: [`GuardedResolver`] is the
//! HTTP client's only resolver and drops every address the policy forbids, so a name that
//! resolves to an allowed address at check time and to `127.0.0.1` at connect time (DNS
//! rebinding) still cannot reach loopback. Endpoints written as IP literals skip resolution, so
//! [`EgressPolicy::check_endpoint`] checks them (and the scheme) before any request is built.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use url::{Host, Url};

/// Kinds of address an operator may open to provider calls; everything else public is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1 (a model server on the same host).
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT), fc00::/7.
    Private,
    /// 169.254.0.0/16 and fe80::/10, where cloud metadata services live.
    LinkLocal,
    /// Public unicast.
    Public,
    /// 0.0.0.0/8, ::, multicast, broadcast, reserved: never a provider.
    Forbidden,
}

impl AddressClass {
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => Self::of_v6(v6),
        }
    }

    fn of_v4(v4: Ipv4Addr) -> Self {
        let [a, b, ..] = v4.octets();
        if v4.is_loopback() {
            Self::Loopback
        } else if v4.is_link_local() {
            Self::LinkLocal
        } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
            Self::Private
        } else if v4.is_unspecified()
            || a == 0
            || v4.is_broadcast()
            || v4.is_multicast()
            || a >= 240
        {
            Self::Forbidden
        } else {
            Self::Public
        }
    }

    /// An IPv6 address by what it reaches: one that carries an IPv4 address (mapped,
    /// compatible, SIIT, NAT64, 6to4, Teredo) is judged by that address, since a translator or
    /// relay on the way delivers it there: `64:ff9b::a9fe:a9fe` is the metadata service.
    fn of_v6(v6: Ipv6Addr) -> Self {
        if v6.is_loopback() {
            return Self::Loopback;
        }
        if v6.is_unspecified() || v6.is_multicast() {
            return Self::Forbidden;
        }
        if let Some(embedded) = embedded_v4(v6) {
            return match embedded {
                Embedded::Address(v4) => Self::of_v4(v4),
                // A local-use NAT64 prefix translates into the operator's own networks:
                // private at best, whatever the embedded address looks like.
                Embedded::LocalTranslation(v4) => match Self::of_v4(v4) {
                    Self::Public => Self::Private,
                    other => other,
                },
            };
        }
        let first = v6.segments()[0];
        if first & 0xffc0 == 0xfe80 {
            Self::LinkLocal
        } else if first & 0xfe00 == 0xfc00 {
            Self::Private
        } else if first & 0xffc0 == 0xfec0
            || (first == 0x2001 && v6.segments()[1] == 0x0db8)
            || (first == 0x0100 && v6.segments()[1..4] == [0, 0, 0])
        {
            // Deprecated site-local (fec0::/10, RFC 3879), documentation (2001:db8::/32) and
            // discard-only (100::/64): never a provider.
            Self::Forbidden
        } else {
            Self::Public
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::Public => "public",
            Self::Forbidden => "reserved",
        }
    }
}

/// The IPv4 address an IPv6 address carries, by the forms that deliver to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedded {
    Address(Ipv4Addr),
    /// Behind the local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215).
    LocalTranslation(Ipv4Addr),
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Embedded> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (IPv4-mapped) and ::a.b.c.d (IPv4-compatible, deprecated but still
        // routed by some stacks); :: and ::1 are handled before.
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(Embedded::Address(low)),
        // ::ffff:0:a.b.c.d (SIIT, IPv4-translated, RFC 2765).
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(Embedded::Address(low)),
        // 64:ff9b::/96 (NAT64 well-known prefix, RFC 6052).
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(Embedded::Address(low)),
        // 64:ff9b:1::/48 (NAT64 local-use prefix); the /96 embedding is the one checked.
        [0x0064, 0xff9b, 0x0001, ..] => Some(Embedded::LocalTranslation(low)),
        // 2002:AABB:CCDD::/48 (6to4, RFC 3056): the relay delivers to AA.BB.CC.DD.
        [0x2002, high, next, ..] => Some(Embedded::Address(Ipv4Addr::new(
            (high >> 8) as u8,
            high as u8,
            (next >> 8) as u8,
            next as u8,
        ))),
        // 2001:0::/32 (Teredo, RFC 4380): the client's address is the last 32 bits inverted.
        [0x2001, 0, ..] => Some(Embedded::Address(Ipv4Addr::from(!u32::from(low)))),
        _ => None,
    }
}

/// What the operator allows: which non-public address classes, and which hosts may be called
/// over plain http (`PROVIDER_EGRESS_ALLOW`, `PROVIDER_PLAIN_HTTP_HOSTS`).
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
    pub allow_link_local: bool,
    /// Host names (lower case) or IP literals that may be called over http.
    pub plain_http_hosts: Vec<String>,
}

/// Why the guard refused a destination; never carries anything but the host and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRefusal {
    /// http to a host not listed, or a scheme other than http/https.
    Insecure(String),
    /// The host resolves only to addresses the policy forbids.
    Address {
        host: String,
        address: IpAddr,
        class: AddressClass,
    },
    /// The host has no address at all.
    Unresolvable(String),
}

impl fmt::Display for EgressRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Insecure(message) => f.write_str(message),
            Self::Address {
                host,
                address,
                class,
            } => write!(
                f,
                "the endpoint's host {host} resolves to {address}, a {} address that provider \
                 calls may not reach (PROVIDER_EGRESS_ALLOW)",
                class.label()
            ),
            Self::Unresolvable(host) => write!(f, "the endpoint's host {host} has no address"),
        }
    }
}

impl std::error::Error for EgressRefusal {}

impl EgressPolicy {
    pub fn allows(&self, class: AddressClass) -> bool {
        match class {
            AddressClass::Public => true,
            AddressClass::Loopback => self.allow_loopback,
            AddressClass::Private => self.allow_private,
            AddressClass::LinkLocal => self.allow_link_local,
            AddressClass::Forbidden => false,
        }
    }

    /// Checks what can be checked before a connection: the scheme (https, or http to a listed
    /// host) and an endpoint written as an IP address.
    pub fn check_endpoint(&self, endpoint: &Url) -> Result<(), EgressRefusal> {
        let host = endpoint.host_str().unwrap_or_default().to_ascii_lowercase();
        match endpoint.scheme() {
            "https" => {}
            "http" if self.plain_http_hosts.contains(&host) => {}
            "http" => {
                return Err(EgressRefusal::Insecure(format!(
                    "the endpoint is plain http and {host} is not a host allowed plain http \
                     (PROVIDER_PLAIN_HTTP_HOSTS); a key is sent only over https"
                )));
            }
            other => {
                return Err(EgressRefusal::Insecure(format!(
                    "the endpoint's scheme {other} cannot carry a provider call"
                )));
            }
        }
        let literal = match endpoint.host() {
            Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(address) = literal {
            self.check_address(&host, address)?;
        }
        Ok(())
    }

    fn check_address(&self, host: &str, address: IpAddr) -> Result<(), EgressRefusal> {
        let class = AddressClass::of(address);
        if self.allows(class) {
            Ok(())
        } else {
            Err(EgressRefusal::Address {
                host: host.to_owned(),
                address,
                class,
            })
        }
    }
}

/// The HTTP client's resolver: the system's answer with every forbidden address removed; a name
/// with nothing left fails with an [`EgressRefusal`] that the caller finds in the error chain.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| match policy.check_address(&host, address.ip()) {
                    Ok(()) => true,
                    Err(refused) => {
                        refusal.get_or_insert(refused);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let refusal = refusal.unwrap_or(EgressRefusal::Unresolvable(host));
                return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The egress refusal somewhere in an error's chain of causes, if that is why it failed.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<EgressRefusal> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refusal) = error.downcast_ref::<EgressRefusal>() {
            return Some(refusal.clone());
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(address: &str) -> AddressClass {
        AddressClass::of(address.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
    }

    #[test]
    fn addresses_are_classified() {
        assert_eq!(class("127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("::1"), AddressClass::Loopback);
        assert_eq!(class("::ffff:127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("169.254.169.254"), AddressClass::LinkLocal);
        assert_eq!(class("fe80::1"), AddressClass::LinkLocal);
        assert_eq!(class("10.1.2.3"), AddressClass::Private);
        assert_eq!(class("172.20.0.1"), AddressClass::Private);
        assert_eq!(class("192.168.1.1"), AddressClass::Private);
        assert_eq!(class("100.100.1.1"), AddressClass::Private);
        assert_eq!(class("fd00::1"), AddressClass::Private);
        assert_eq!(class("0.0.0.0"), AddressClass::Forbidden);
        assert_eq!(class("224.0.0.1"), AddressClass::Forbidden);
        assert_eq!(class("8.8.8.8"), AddressClass::Public);
        assert_eq!(class("2606:4700::1111"), AddressClass::Public);
    }

    #[test]
    fn ipv6_addresses_carrying_ipv4_are_judged_by_the_ipv4_address() {
        // The forms the review found treated as public, and their relatives.
        assert_eq!(class("::127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("::169.254.169.254"), AddressClass::LinkLocal);
        assert_eq!(class("64:ff9b::a9fe:a9fe"), AddressClass::LinkLocal);
        assert_eq!(class("64:ff9b::7f00:1"), AddressClass::Loopback);
        assert_eq!(class("64:ff9b::a00:1"), AddressClass::Private);
        assert_eq!(class("64:ff9b:1::a00:1"), AddressClass::Private);
        assert_eq!(class("64:ff9b:1::a9fe:a9fe"), AddressClass::LinkLocal);
        assert_eq!(class("64:ff9b:1::808:808"), AddressClass::Private);
        assert_eq!(class("2002:7f00:1::"), AddressClass::Loopback);
        assert_eq!(class("2002:a9fe:a9fe::1"), AddressClass::LinkLocal);
        assert_eq!(class("2002:c0a8:101::1"), AddressClass::Private);
        assert_eq!(class("::ffff:0:a9fe:a9fe"), AddressClass::LinkLocal);
        assert_eq!(class("::ffff:0:7f00:1"), AddressClass::Loopback);
        // Teredo: client 127.0.0.1 is stored inverted (0x80ff:0xfffe).
        assert_eq!(
            class("2001:0:4136:e378:8000:63bf:80ff:fffe"),
            AddressClass::Loopback
        );
        assert_eq!(class("fec0::1"), AddressClass::Forbidden);
        assert_eq!(class("2001:db8::1"), AddressClass::Forbidden);
        // Public IPv4 behind the well-known NAT64 prefix or 6to4 stays public.
        assert_eq!(class("64:ff9b::808:808"), AddressClass::Public);
        assert_eq!(class("2002:808:808::1"), AddressClass::Public);
    }

    #[test]
    fn schemes_and_literals_are_checked_before_connecting() {
        let policy = EgressPolicy {
            plain_http_hosts: vec!["models.internal".to_owned()],
            ..EgressPolicy::default()
        };
        let check = |url: &str| {
            Url::parse(url)
                .map_err(|_| EgressRefusal::Unresolvable(url.to_owned()))
                .and_then(|url| policy.check_endpoint(&url))
        };
        assert!(check("https://api.openai.com/v1/embeddings").is_ok());
        assert!(check("http://models.internal:8080/v1/embeddings").is_ok());
        assert!(matches!(
            check("http://api.openai.com/v1/embeddings"),
            Err(EgressRefusal::Insecure(_))
        ));
        assert!(matches!(
            check("https://169.254.169.254/latest/meta-data"),
            Err(EgressRefusal::Address {
                class: AddressClass::LinkLocal,
                ..
            })
        ));
        assert!(matches!(
            check("https://[::1]:8443/v1/embeddings"),
            Err(EgressRefusal::Address {
                class: AddressClass::Loopback,
                ..
            })
        ));
    }
}

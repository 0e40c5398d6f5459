//! The MTU of the route to an address, as the kernel sees it: the device's MTU, a route's `mtu`,
//! or what path MTU discovery learned. A UDP socket connected to the address (nothing is sent)
//! reads it with `IP_MTU` / `IPV6_MTU` (ip(7), ipv6(7)); answers are cached briefly, so the
//! receive path asks the kernel about a destination about once a second.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

/// How long an answer is used before the kernel is asked again (path MTUs change).
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Most destinations remembered; the cache starts afresh beyond.
const CAPACITY: usize = 4096;

/// Route MTUs by destination, looked up on demand.
#[derive(Debug)]
pub(crate) struct PathMtu {
    cache: HashMap<IpAddr, (Option<usize>, Instant)>,
    /// false: every answer is "no route" (tests that must not depend on the host's routes).
    ask_kernel: bool,
}

impl PathMtu {
    /// An empty cache.
    pub(crate) fn new() -> Self {
        Self {
            cache: HashMap::new(),
            ask_kernel: true,
        }
    }

    /// One that never asks the kernel and knows no route.
    #[cfg(test)]
    pub(crate) fn unknown() -> Self {
        Self {
            ask_kernel: false,
            ..Self::new()
        }
    }

    /// The MTU of the route to `destination`; `None` when there is no route (or the kernel
    /// would not say).
    pub(crate) fn get(&mut self, destination: IpAddr) -> Option<usize> {
        if !self.ask_kernel {
            return None;
        }
        let now = Instant::now();
        if let Some(&(mtu, at)) = self.cache.get(&destination) {
            if now.duration_since(at) < FRESH_FOR {
                return mtu;
            }
        }
        if self.cache.len() >= CAPACITY {
            self.cache.clear();
        }
        let mtu = route_mtu(destination).ok();
        self.cache.insert(destination, (mtu, now));
        mtu
    }
}

/// Asks the kernel for the MTU of the route to `destination`.
pub(crate) fn route_mtu(destination: IpAddr) -> io::Result<usize> {
    let (local, level, option): (IpAddr, _, _) = match destination {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED.into(), libc::IPPROTO_IP, libc::IP_MTU),
        IpAddr::V6(_) => (
            Ipv6Addr::UNSPECIFIED.into(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU,
        ),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    // Connecting a UDP socket only looks the route up; nothing goes out.
    socket.connect(SocketAddr::new(destination, 9))?;
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket; `mtu` and `len` are a c_int buffer and its size, as these
    // options write.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw mut mtu).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(mtu).map_err(|_| io::ErrorKind::InvalidData.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_have_the_loopback_mtu_and_answers_are_cached() {
        // lo's MTU is 65536 by default; whatever it is, it is far above Ethernet's.
        let mut cache = PathMtu::new();
        for address in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let Ok(mtu) = route_mtu(address) else {
                // A sandbox without loopback (or IPv6) has nothing to say here.
                continue;
            };
            assert!(mtu > 1500, "{address}: {mtu}");
            assert_eq!(cache.get(address), Some(mtu));
            assert!(cache.cache.contains_key(&address));
        }
    }

    #[test]
    fn answers_are_used_while_fresh_then_asked_again() {
        let lo = IpAddr::from(Ipv4Addr::LOCALHOST);
        let Ok(real) = route_mtu(lo) else {
            return;
        };
        let mut cache = PathMtu::new();
        cache.cache.insert(lo, (Some(1234), Instant::now()));
        assert_eq!(cache.get(lo), Some(1234), "a fresh answer is used");
        let Some(old) = Instant::now().checked_sub(FRESH_FOR * 2) else {
            return;
        };
        cache.cache.insert(lo, (Some(1234), old));
        assert_eq!(cache.get(lo), Some(real), "a stale answer is replaced");
    }
}

//! The per-IP connection count, so that one address cannot take every connection slot.
//!
//! Loopback clients are not counted: they are this machine's own programs (gunicorn or celery
//! workers, a local Postfix), which open many connections from one address by design, and one
//! local program hogging slots is not an attack the cap could stop anyway. Postfix exempts its own
//! networks from its per-client limits for the same reason. The global `max_connections` still
//! bounds them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The count of open connections per address, shared by the counter and its slots.
type OpenCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Open connections per remote address.
pub struct Peers {
    max_per_ip: usize,
    /// A std mutex: it is never held across an `.await`, and each use is a map lookup.
    open: OpenCounts,
}

/// One admitted connection; dropping it frees its place.
pub struct PeerSlot {
    /// The counted address; `None` for a loopback client, which is not counted.
    counted: Option<(IpAddr, OpenCounts)>,
}

impl Peers {
    /// Counts at most `max_per_ip` connections per address.
    pub fn new(max_per_ip: usize) -> Peers {
        Peers {
            max_per_ip,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it already has the maximum.
    /// A loopback address always gets one (see the module documentation).
    pub fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        if ip.to_canonical().is_loopback() {
            return Some(PeerSlot { counted: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counted: Some((ip, self.open.clone())),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let Some((ip, open)) = &self.counted else {
            return;
        };
        let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(ip) {
            *count -= 1;
            // Forget idle addresses, or the map would grow with every client ever seen.
            if *count == 0 {
                open.remove(ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_frees_on_drop() {
        let peers = Peers::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = peers.admit(a).unwrap();
        let _second = peers.admit(a).unwrap();
        assert!(peers.admit(a).is_none());
        assert!(peers.admit(b).is_some());
        drop(first);
        assert!(peers.admit(a).is_some());
        assert!(peers.open.lock().unwrap().get(&b).is_none());
    }

    #[test]
    fn loopback_clients_are_not_counted() {
        let peers = Peers::new(1);
        let local: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        let slots: Vec<PeerSlot> = (0..100)
            .flat_map(|_| local.iter().map(|ip| peers.admit(*ip).unwrap()))
            .collect();
        assert!(peers.open.lock().unwrap().is_empty());
        drop(slots);
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        let _held = peers.admit(remote).unwrap();
        assert!(peers.admit(remote).is_none());
    }
}

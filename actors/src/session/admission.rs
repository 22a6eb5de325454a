//! Per-address admission: how many connections one IP address may hold at once and how
//! fast it may open new ones. Every connect and close is an event every dashboard
//! receives, so one address churning connections would otherwise cost work for all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::rate::TokenBucket;

/// The limits (`server.max_connections_per_ip`, `server.connect_rate_per_ip`).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    /// Open connections per address.
    pub max_per_ip: usize,
    /// New connections per second per address, sustained (burst: twice that).
    pub connects_per_s: f64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            max_per_ip: 1024,
            connects_per_s: 100.0,
        }
    }
}

#[derive(Debug)]
struct PerIp {
    open: usize,
    bucket: TokenBucket,
}

/// The table of addresses, shared by every worker's upgrade handler.
#[derive(Debug, Clone)]
pub struct Admission {
    settings: AdmissionSettings,
    table: Arc<Mutex<HashMap<IpAddr, PerIp>>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("{ip} already has {open} connections open (server.max_connections_per_ip)")]
    TooMany { ip: IpAddr, open: usize },
    #[error("{ip} is opening connections faster than {rate}/s (server.connect_rate_per_ip)")]
    TooFast { ip: IpAddr, rate: f64 },
}

/// An admitted connection's place; it is given back when dropped.
#[derive(Debug)]
pub struct Slot {
    ip: IpAddr,
    table: Arc<Mutex<HashMap<IpAddr, PerIp>>>,
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Admission {
        Admission {
            settings,
            table: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refused> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let rate = self.settings.connects_per_s;
        let entry = table.entry(ip).or_insert_with(|| PerIp {
            open: 0,
            bucket: TokenBucket::new(rate, (rate * 2.0).max(1.0)),
        });
        if entry.open >= self.settings.max_per_ip {
            return Err(Refused::TooMany {
                ip,
                open: entry.open,
            });
        }
        if !entry.bucket.try_take() {
            return Err(Refused::TooFast { ip, rate });
        }
        entry.open += 1;
        Ok(Slot {
            ip,
            table: self.table.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = table.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
            // An address with nothing open and a full bucket is forgotten, so the table
            // holds only addresses that are connected or were just now.
            if e.open == 0 && e.bucket.is_full() {
                table.remove(&self.ip);
            }
        }
    }
}

/// A count shared by every connection (client-audio streams: each may hold an utterance
/// of up to `stt.max_utterance_s` and run interim transcriptions).
#[derive(Debug, Clone)]
pub struct SharedLimit {
    max: usize,
    used: Arc<std::sync::atomic::AtomicUsize>,
}

/// One unit of a [`SharedLimit`], given back when dropped.
#[derive(Debug)]
pub struct LimitSlot(Arc<std::sync::atomic::AtomicUsize>);

impl SharedLimit {
    pub fn new(max: usize) -> SharedLimit {
        SharedLimit {
            max,
            used: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A unit, if fewer than `max` are taken.
    pub fn try_take(&self) -> Option<LimitSlot> {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| LimitSlot(self.used.clone()))
    }
}

impl Drop for LimitSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_and_the_connect_rate_are_bounded_per_address() {
        let a = Admission::new(AdmissionSettings {
            max_per_ip: 2,
            connects_per_s: 1000.0,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = a.admit(ip).unwrap();
        let _s2 = a.admit(ip).unwrap();
        assert_eq!(a.admit(ip).unwrap_err(), Refused::TooMany { ip, open: 2 });
        let _o = a.admit(other).expect("another address is not affected");
        drop(s1);
        let _s3 = a
            .admit(ip)
            .expect("a closed connection gives its place back");

        let slow = Admission::new(AdmissionSettings {
            max_per_ip: 100,
            connects_per_s: 1.0,
        });
        let _k: Vec<Slot> = (0..2).map(|_| slow.admit(ip).unwrap()).collect();
        assert!(matches!(slow.admit(ip), Err(Refused::TooFast { .. })));
    }

    #[test]
    fn a_shared_limit_gives_units_back() {
        let l = SharedLimit::new(2);
        let a = l.try_take().unwrap();
        let _b = l.try_take().unwrap();
        assert!(l.try_take().is_none());
        drop(a);
        assert!(l.try_take().is_some());
    }
}

//! The bridge's outbox: every event a node's hub numbers waits here, on disk, until
//! JetStream has acknowledged it. In order (keys are an increasing counter), bounded (the
//! oldest go first when it is full, counted), and it survives a restart: what a previous
//! run could not send goes out, under that run's epoch, before anything new.
//!
//! sled, as the store uses, but its own directory and no fsync per event: sled writes its
//! log back every 500 ms, which is the most a crash can lose of what NATS never had.

use std::path::Path;

use super::ClusterError;

/// One event waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The hub's epoch when it was numbered.
    pub epoch: String,
    /// Its seq in that epoch.
    pub seq: u64,
    /// Its type, as on the wire (`stt_result`).
    pub event_type: String,
    /// The full envelope.
    pub json: Vec<u8>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.json.len() + self.epoch.len() + 32);
        v.extend_from_slice(&self.seq.to_be_bytes());
        for s in [&self.epoch, &self.event_type] {
            // Both are short identifiers (12 hex digits, a type name).
            let b = &s.as_bytes()[..s.len().min(255)];
            v.push(b.len() as u8);
            v.extend_from_slice(b);
        }
        v.extend_from_slice(&self.json);
        v
    }

    fn decode(v: &[u8]) -> Option<Record> {
        let seq = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
        let mut at = 8;
        let mut text = || -> Option<String> {
            let n = *v.get(at)? as usize;
            let s = std::str::from_utf8(v.get(at + 1..at + 1 + n)?).ok()?;
            at += 1 + n;
            Some(s.to_string())
        };
        let epoch = text()?;
        let event_type = text()?;
        Some(Record {
            epoch,
            seq,
            event_type,
            json: v.get(at..)?.to_vec(),
        })
    }
}

/// The queue on disk.
pub struct Outbox {
    path: String,
    tree: sled::Tree,
    // Kept open for the tree's lifetime.
    _db: sled::Db,
    next_key: u64,
    len: usize,
    max: usize,
    dropped: u64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("len", &self.len)
            .field("max", &self.max)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, holding at most `max` events.
    pub fn open(dir: &Path, max: usize) -> Result<Outbox, ClusterError> {
        let err = |e: sled::Error| ClusterError::Outbox {
            path: dir.display().to_string(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| ClusterError::Outbox {
            path: dir.display().to_string(),
            detail: e.to_string(),
        })?;
        // A store just closed is still locked until sled's flusher thread lets go of it
        // (up to its 500 ms flush interval): a node restarted at once waits for that.
        let mut tries = 0;
        let opened = loop {
            match sled::Config::new().path(dir).open() {
                Err(e) if tries < 40 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other,
            }
        };
        let db = opened.map_err(|e| {
            let mut e = err(e);
            if let ClusterError::Outbox { detail, .. } = &mut e {
                if detail.contains("lock") {
                    detail.push_str(
                        " (is another coda using this store? give each node its own storage.path)",
                    );
                }
            }
            e
        })?;
        let tree = db.open_tree("outbox").map_err(err)?;
        let next_key = match tree.last().map_err(err)? {
            Some((k, _)) => key_of(&k).map_or(0, |k| k + 1),
            None => 0,
        };
        let len = tree.len();
        Ok(Outbox {
            path: dir.display().to_string(),
            tree,
            _db: db,
            next_key,
            len,
            max: max.max(1),
            dropped: 0,
        })
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing waiting?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Events dropped because the outbox was full, since it was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends an event; when full, the oldest is dropped (returns how many were).
    pub fn push(&mut self, r: &Record) -> Result<usize, ClusterError> {
        let mut dropped = 0;
        while self.len >= self.max {
            match self.tree.pop_min() {
                Ok(Some(_)) => {
                    self.len -= 1;
                    dropped += 1;
                }
                Ok(None) => {
                    self.len = 0;
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        self.tree
            .insert(self.next_key.to_be_bytes(), r.encode())
            .map_err(|e| self.err(e))?;
        self.next_key += 1;
        self.len += 1;
        self.dropped += dropped as u64;
        Ok(dropped)
    }

    /// Up to `n` of the oldest events, with their keys, oldest first.
    pub fn peek(&self, n: usize) -> Vec<(u64, Record)> {
        self.tree
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| Some((key_of(&k)?, Record::decode(&v)?)))
            .take(n)
            .collect()
    }

    /// Removes the events up to and including `key` (they were acknowledged).
    pub fn remove_through(&mut self, key: u64) -> Result<(), ClusterError> {
        loop {
            match self.tree.first() {
                Ok(Some((k, _))) if key_of(&k).is_some_and(|k| k <= key) => {
                    self.tree.remove(k).map_err(|e| self.err(e))?;
                    self.len = self.len.saturating_sub(1);
                }
                Ok(_) => return Ok(()),
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    /// Writes what is buffered to disk (on shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.tree.flush() {
            tracing::warn!(error = %e, "the cluster outbox could not be flushed");
        }
    }

    fn err(&self, e: sled::Error) -> ClusterError {
        ClusterError::Outbox {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }
}

fn key_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            epoch: "abc123".into(),
            seq,
            event_type: "stt_result".into(),
            json: format!("{{\"seq\":{seq}}}").into_bytes(),
        }
    }

    #[test]
    fn records_come_back_as_written() {
        let r = rec(7);
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(b"short"), None);
    }

    #[test]
    fn events_wait_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Outbox::open(dir.path(), 100).unwrap();
            for s in 1..=5 {
                o.push(&rec(s)).unwrap();
            }
            let head = o.peek(2);
            assert_eq!(head.iter().map(|(_, r)| r.seq).collect::<Vec<_>>(), [1, 2]);
            o.remove_through(head[1].0).unwrap();
            assert_eq!(o.len(), 3);
            o.flush();
        }
        let mut o = Outbox::open(dir.path(), 100).unwrap();
        assert_eq!(o.len(), 3);
        o.push(&rec(6)).unwrap();
        let all: Vec<u64> = o.peek(10).into_iter().map(|(_, r)| r.seq).collect();
        assert_eq!(all, [3, 4, 5, 6]);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 3).unwrap();
        for s in 1..=5 {
            o.push(&rec(s)).unwrap();
        }
        assert_eq!(o.len(), 3);
        assert_eq!(o.dropped(), 2);
        let all: Vec<u64> = o.peek(10).into_iter().map(|(_, r)| r.seq).collect();
        assert_eq!(all, [3, 4, 5]);
    }
}

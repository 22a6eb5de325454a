//! Wyoming framing: one JSON header line (`type`, optional `data`, `data_length`,
//! `payload_length`, `version`), then `data_length` bytes of JSON merged into `data`,
//! then `payload_length` bytes of binary payload (audio). Every length is bounded before
//! anything is read.

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version written in headers (the Python reference's at the time).
pub const VERSION: &str = "1.8.0";

/// Largest header line, data block and payload accepted.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: usize,
    pub data: usize,
    pub payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header: 64 * 1024,
            data: 1 << 20,
            payload: 4 << 20,
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: String,
    pub data: Map<String, Value>,
    pub payload: Option<Vec<u8>>,
}

impl Event {
    /// An event of `kind` with `data` (an object; anything else is sent as `{}`).
    pub fn new(kind: &str, data: Value) -> Event {
        Event {
            kind: kind.to_string(),
            data: match data {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            payload: None,
        }
    }

    /// With a binary payload.
    pub fn with_payload(mut self, payload: Vec<u8>) -> Event {
        self.payload = Some(payload);
        self
    }

    /// A string field of `data`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }

    /// An unsigned field of `data`.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.data.get(key).and_then(Value::as_u64)
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("header line longer than {0} bytes")]
    HeaderTooLong(usize),
    #[error("header is not a JSON object with a string `type`: {0}")]
    BadHeader(String),
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: usize,
    },
    #[error("`data` block is not a JSON object: {0}")]
    BadData(String),
}

/// Reads one event; `None` at a clean end of the stream.
pub async fn read_event<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limits: Limits,
) -> Result<Option<Event>, FrameError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(limits.header as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if line.len() > limits.header {
            return Err(FrameError::HeaderTooLong(limits.header));
        }
        // The stream ended mid-line.
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let header: Value =
        serde_json::from_slice(&line).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let Value::Object(mut header) = header else {
        return Err(FrameError::BadHeader("not an object".into()));
    };
    let kind = match header.get("type").and_then(Value::as_str) {
        Some(t) if !t.is_empty() && t.len() <= 64 => t.to_string(),
        _ => return Err(FrameError::BadHeader("no string `type`".into())),
    };
    let length = |h: &Map<String, Value>, key: &str| -> Result<u64, FrameError> {
        match h.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| FrameError::BadHeader(format!("`{key}` is not a length"))),
        }
    };
    let data_len = length(&header, "data_length")?;
    let payload_len = length(&header, "payload_length")?;
    for (what, len, limit) in [
        ("data block", data_len, limits.data),
        ("payload", payload_len, limits.payload),
    ] {
        if len > limit as u64 {
            return Err(FrameError::TooLarge { what, len, limit });
        }
    }
    let mut data = match header.remove("data") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(FrameError::BadData("inline `data` is not an object".into())),
    };
    if data_len > 0 {
        let mut buf = vec![0u8; data_len as usize];
        r.read_exact(&mut buf).await?;
        match serde_json::from_slice::<Value>(&buf) {
            Ok(Value::Object(extra)) => data.extend(extra),
            Ok(_) => return Err(FrameError::BadData("not an object".into())),
            Err(e) => return Err(FrameError::BadData(e.to_string())),
        }
    }
    let payload = if payload_len > 0 {
        let mut buf = vec![0u8; payload_len as usize];
        r.read_exact(&mut buf).await?;
        Some(buf)
    } else {
        None
    };
    Ok(Some(Event {
        kind,
        data,
        payload,
    }))
}

/// Writes one event (data as a separate block, as the reference implementation does).
pub async fn write_event<W: AsyncWrite + Unpin>(w: &mut W, e: &Event) -> std::io::Result<()> {
    let mut header = Map::new();
    header.insert("type".into(), Value::String(e.kind.clone()));
    header.insert("version".into(), Value::String(VERSION.into()));
    let data = if e.data.is_empty() {
        None
    } else {
        Some(serde_json::to_vec(&e.data).map_err(std::io::Error::other)?)
    };
    if let Some(d) = &data {
        header.insert("data_length".into(), Value::from(d.len()));
    }
    if let Some(p) = &e.payload {
        header.insert("payload_length".into(), Value::from(p.len()));
    }
    let mut out = serde_json::to_vec(&Value::Object(header)).map_err(std::io::Error::other)?;
    out.push(b'\n');
    if let Some(d) = data {
        out.extend_from_slice(&d);
    }
    if let Some(p) = &e.payload {
        out.extend_from_slice(p);
    }
    w.write_all(&out).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn roundtrip(e: &Event) -> Event {
        let mut buf = Vec::new();
        write_event(&mut buf, e).await.unwrap();
        let mut r = tokio::io::BufReader::new(&buf[..]);
        read_event(&mut r, Limits::default())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn events_come_back_as_written() {
        let e = Event::new(
            "audio-chunk",
            json!({"rate": 16000, "width": 2, "channels": 1}),
        )
        .with_payload(vec![1, 2, 3, 4]);
        assert_eq!(roundtrip(&e).await, e);
        let bare = Event::new("describe", json!({}));
        assert_eq!(roundtrip(&bare).await, bare);
    }

    #[tokio::test]
    async fn inline_data_and_a_data_block_are_merged() {
        let wire = b"{\"type\":\"transcribe\",\"data\":{\"language\":\"en\"},\"data_length\":14}\n{\"name\":\"big\"}";
        let mut r = tokio::io::BufReader::new(&wire[..]);
        let e = read_event(&mut r, Limits::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.str("language"), Some("en"));
        assert_eq!(e.str("name"), Some("big"));
    }

    #[tokio::test]
    async fn bad_frames_are_refused_with_a_reason() {
        let limits = Limits {
            header: 64,
            data: 16,
            payload: 16,
        };
        for (wire, expect) in [
            (&b"not json\n"[..], "JSON"),
            (b"{\"data\":{}}\n", "type"),
            (b"{\"type\":\"x\",\"payload_length\":99}\n", "payload of 99"),
            (b"{\"type\":\"x\",\"data_length\":-1}\n", "length"),
            (&[b'{'; 100][..], "longer than 64"),
        ] {
            let mut r = tokio::io::BufReader::new(wire);
            let err = read_event(&mut r, limits).await.unwrap_err().to_string();
            assert!(
                err.contains(expect),
                "{err:?} for {:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut empty = tokio::io::BufReader::new(&b""[..]);
        assert!(read_event(&mut empty, limits).await.unwrap().is_none());
    }
}

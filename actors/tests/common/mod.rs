//! Shared helpers for the LLM engine tests: fast HTTP options, bounded collection of a
//! stream, SSE/NDJSON piece builders. Everything talks to 127.0.0.1 only.

#![allow(dead_code)]

use std::time::Duration;

use coda_actors::llm::http::HttpOptions;
use coda_actors::llm::{ChatMessage, ChatRequest, ChatRole, ChatStream, LlmError, StreamChunk};
use futures_util::StreamExt;

/// Upper bound for any single test wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// Short timeouts and quick retries, so failure paths finish fast.
pub fn fast_http() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        max_retries: 2,
        max_retry_wait: Duration::from_secs(5),
        backoff_base: Duration::from_millis(20),
    }
}

/// A one-message request.
pub fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::new(ChatRole::User, text)],
        ..Default::default()
    }
}

/// Every item of `stream`, stopping after the first error; bounded by [`WAIT`].
pub async fn drain(stream: ChatStream) -> Vec<Result<StreamChunk, LlmError>> {
    tokio::time::timeout(WAIT, async move {
        let mut stream = stream;
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let stop = item.is_err();
            out.push(item);
            if stop {
                break;
            }
        }
        out
    })
    .await
    .expect("stream did not finish in time")
}

/// The text of the `Token` chunks.
pub fn text(items: &[Result<StreamChunk, LlmError>]) -> String {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(StreamChunk::Token(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// An SSE `data:` event for a chat.completion.chunk with `content`.
pub fn oa_delta(content: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
}

/// Splits `s` into pieces of at most `n` bytes (possibly inside a UTF-8 character).
pub fn bytes_pieces(s: &str, n: usize) -> Vec<Vec<u8>> {
    s.as_bytes().chunks(n).map(<[u8]>::to_vec).collect()
}

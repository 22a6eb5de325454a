//! `remember` and `recall`: long-term memory through the Memory actor (so its events,
//! durability and index are the same as for every other memory).

use actix::Addr;
use serde_json::{json, Value};

use crate::memory::{MemoryActor, Search, Store};
use crate::tools::registry::{Tool, ToolContext, ToolFailure};

fn unavailable(e: actix::MailboxError) -> ToolFailure {
    ToolFailure::Unavailable(format!("the memory actor did not answer: {e}"))
}

/// Stores a long-term memory.
#[derive(Debug, Clone)]
pub struct RememberTool {
    memory: Addr<MemoryActor>,
}

impl RememberTool {
    /// A tool that stores through `memory`.
    pub fn new(memory: Addr<MemoryActor>) -> RememberTool {
        RememberTool { memory }
    }
}

#[async_trait::async_trait]
impl Tool for RememberTool {
    fn name(&self) -> &str {
        "remember"
    }

    fn description(&self) -> &str {
        "Stores a fact about the user or their world in long-term memory, to recall in later conversations. Use when the user asks you to remember something or states a lasting preference."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "content": {"type": "string", "minLength": 1, "maxLength": 4000,
                            "description": "The fact, as a full sentence, e.g. \"The user prefers green tea.\""},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 16,
                         "description": "Labels, e.g. [\"preference\"]"}
            },
            "required": ["content"],
            "additionalProperties": false
        })
    }

    async fn call(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolFailure> {
        let content = args["content"].as_str().unwrap_or_default().to_string();
        let tags = args["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let item = self
            .memory
            .send(Store {
                content,
                tags,
                session_id: ctx.session_id.clone(),
                turn_id: ctx.turn_id.clone(),
                source: "tool".into(),
                importance: None,
            })
            .await
            .map_err(unavailable)?
            .map_err(|e| ToolFailure::Failed(e.to_string()))?;
        Ok(
            json!({"memory_id": item.memory_id, "content": item.content, "tags": item.tags, "stored": true}),
        )
    }
}

/// Searches long-term memory.
#[derive(Debug, Clone)]
pub struct RecallTool {
    memory: Addr<MemoryActor>,
}

impl RecallTool {
    /// A tool that searches through `memory`.
    pub fn new(memory: Addr<MemoryActor>) -> RecallTool {
        RecallTool { memory }
    }
}

#[async_trait::async_trait]
impl Tool for RecallTool {
    fn name(&self) -> &str {
        "recall"
    }

    fn description(&self) -> &str {
        "Searches long-term memory for facts stored in earlier conversations, best match first."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 1000,
                          "description": "What to look for, e.g. \"tea preference\""},
                "limit": {"type": "integer", "minimum": 1, "maximum": 20}
            },
            "required": ["query"],
            "additionalProperties": false
        })
    }

    async fn call(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolFailure> {
        let found = self
            .memory
            .send(Search {
                query: args["query"].as_str().unwrap_or_default().to_string(),
                limit: Some(args["limit"].as_u64().unwrap_or(5) as usize),
                session_id: ctx.session_id.clone(),
                turn_id: ctx.turn_id.clone(),
            })
            .await
            .map_err(unavailable)?
            .map_err(|e| ToolFailure::Failed(e.to_string()))?;
        Ok(json!({"count": found.items.len(), "memories": found.items}))
    }
}

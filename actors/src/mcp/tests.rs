use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::json;

use super::*;

#[test]
fn results_join_text_cut_it_and_report_errors() {
    let r = CallToolResult::success(vec![
        ContentBlock::text("Echo: hi"),
        ContentBlock::text("two"),
    ]);
    assert_eq!(
        result_value(&r, 1000).unwrap(),
        json!({"text": "Echo: hi\ntwo"})
    );
    let long = CallToolResult::success(vec![ContentBlock::text("é".repeat(100))]);
    let v = result_value(&long, 51).unwrap();
    assert_eq!(v["text"].as_str().unwrap().len(), 50);
    assert!(v["truncated"].is_string());
    let err = CallToolResult::error(vec![ContentBlock::text("no such city")]);
    assert_eq!(
        result_value(&err, 1000),
        Err(ToolFailure::Failed("no such city".into()))
    );
}

#[test]
fn server_names_are_tool_prefixes() {
    assert!(valid_server_name("time"));
    assert!(valid_server_name("server-everything"));
    assert!(!valid_server_name("Time"));
    assert!(!valid_server_name("a__b"));
    assert!(!valid_server_name("a.b"));
    assert!(!valid_server_name(""));
}

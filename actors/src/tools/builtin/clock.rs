//! `clock`: the current time and date, in the machine's time zone or a named one.

use serde_json::{json, Value};

use crate::tools::registry::{Tool, ToolContext, ToolFailure};

/// The current time and date.
#[derive(Debug, Default)]
pub struct ClockTool;

/// The clock's answer for `now` (a function of the time, so it can be tested).
pub fn describe(now: &jiff::Zoned) -> Value {
    let tz = now.time_zone().iana_name().unwrap_or("local").to_string();
    json!({
        "time": now.strftime("%H:%M").to_string(),
        "date": now.strftime("%Y-%m-%d").to_string(),
        "weekday": now.strftime("%A").to_string(),
        "timezone": tz,
        "utc_offset": now.strftime("%:z").to_string(),
        "iso": now.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "unix": now.timestamp().as_millisecond() as f64 / 1000.0,
        "spoken": now.strftime("It is %-I:%M %p on %A, %B %-d, %Y.").to_string(),
    })
}

#[async_trait::async_trait]
impl Tool for ClockTool {
    fn name(&self) -> &str {
        "clock"
    }

    fn description(&self) -> &str {
        "The current time, date and weekday, in the local time zone or an IANA time zone such as \"Asia/Tokyo\"."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone name, e.g. \"Europe/Paris\"; omit for local time",
                    "maxLength": 64
                }
            },
            "additionalProperties": false
        })
    }

    fn output_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "required": ["time", "date", "weekday", "timezone", "iso", "unix", "spoken"]
        }))
    }

    async fn call(&self, args: Value, _: ToolContext) -> Result<Value, ToolFailure> {
        let now = jiff::Zoned::now();
        let now = match args.get("timezone").and_then(Value::as_str) {
            Some(tz) => now
                .in_tz(tz)
                .map_err(|_| ToolFailure::Failed(format!("unknown time zone \"{tz}\"")))?,
            None => now,
        };
        Ok(describe(&now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_fixed_instant() {
        let z: jiff::Zoned = "2025-05-01T13:45:00+09:00[Asia/Tokyo]"
            .parse()
            .expect("zoned");
        let v = describe(&z);
        assert_eq!(v["time"], "13:45");
        assert_eq!(v["date"], "2025-05-01");
        assert_eq!(v["weekday"], "Thursday");
        assert_eq!(v["timezone"], "Asia/Tokyo");
        assert_eq!(v["utc_offset"], "+09:00");
        assert_eq!(v["spoken"], "It is 1:45 PM on Thursday, May 1, 2025.");
        assert_eq!(v["unix"], 1_746_074_700.0);
    }
}

//! `calculator`: evaluates arithmetic (`+ - * / % ^`, parentheses, functions such as
//! `sqrt`, constants `pi` and `e`), also in spoken form ("12 times 7", "20 percent of 80",
//! "square root of 16").
//!
//! A small recursive-descent parser of its own: general expression crates (evalexpr,
//! meval) either do integer division (`7/2 = 3`), carry a scripting language, or are
//! unmaintained; this one is ~200 lines, bounded (length and nesting), and never panics.

use regex::Regex;
use serde_json::{json, Value};
use std::sync::LazyLock;

use crate::tools::registry::{Tool, ToolContext, ToolFailure};

/// Longest expression accepted, in characters.
pub const MAX_EXPRESSION_CHARS: usize = 256;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 48;

/// Arithmetic.
#[derive(Debug, Default)]
pub struct CalculatorTool;

static THOUSANDS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(\d),(\d{3})\b").expect("regex"));
static TIMES_X: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d)\s*x\s*(\d|\()").expect("regex"));

/// Rewrites spoken arithmetic into symbols ("12 times 7" → "12 * 7").
pub fn normalize_spoken(text: &str) -> String {
    let mut s = format!(" {} ", text.trim().to_lowercase());
    for (from, to) in [
        ("×", "*"),
        ("÷", "/"),
        ("−", "-"),
        (" to the power of ", " ^ "),
        (" raised to the ", " ^ "),
        (" raised to ", " ^ "),
        (" multiplied by ", " * "),
        (" divided by ", " / "),
        (" times ", " * "),
        (" plus ", " + "),
        (" minus ", " - "),
        (" over ", " / "),
        (" modulo ", " % "),
        (" mod ", " % "),
        (" squared ", " ^ 2 "),
        (" cubed ", " ^ 3 "),
        (" square root of ", " sqrt "),
        (" the square root of ", " sqrt "),
        (" percent of ", " / 100 * "),
        ("% of ", " / 100 * "),
        (" percent ", " / 100 "),
    ] {
        s = s.replace(from, to);
    }
    // "1,000,000": matches cannot overlap, so repeat until none is left.
    while THOUSANDS.is_match(&s) {
        s = THOUSANDS.replace_all(&s, "$1$2").into_owned();
    }
    let s = TIMES_X.replace_all(&s, "$1 * $2");
    s.trim()
        .trim_end_matches(['?', '=', '.', '!'])
        .trim()
        .to_string()
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(char),
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            // Exponent: 1e3, 2.5E-4
            if i < chars.len()
                && (chars[i] == 'e' || chars[i] == 'E')
                && chars.get(i + 1).is_some_and(|d| {
                    d.is_ascii_digit()
                        || ((*d == '-' || *d == '+')
                            && chars.get(i + 2).is_some_and(char::is_ascii_digit))
                })
            {
                i += 2;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let s: String = chars[start..i].iter().collect();
            out.push(Tok::Num(
                s.parse().map_err(|_| format!("`{s}` is not a number"))?,
            ));
        } else if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if "+-*/%^(),".contains(c) {
            out.push(Tok::Op(c));
            i += 1;
        } else {
            return Err(format!("unexpected `{c}`"));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, op: char) -> bool {
        if self.peek() == Some(&Tok::Op(op)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err("the expression is nested too deeply".into())
        } else {
            Ok(())
        }
    }

    fn expr(&mut self) -> Result<f64, String> {
        self.deeper()?;
        let mut v = self.term()?;
        loop {
            if self.eat('+') {
                v += self.term()?;
            } else if self.eat('-') {
                v -= self.term()?;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(v)
    }

    fn term(&mut self) -> Result<f64, String> {
        let mut v = self.unary()?;
        loop {
            if self.eat('*') {
                v *= self.unary()?;
            } else if self.eat('/') {
                let d = self.unary()?;
                if d == 0.0 {
                    return Err("division by zero".into());
                }
                v /= d;
            } else if self.eat('%') {
                let d = self.unary()?;
                if d == 0.0 {
                    return Err("modulo by zero".into());
                }
                v %= d;
            } else {
                break;
            }
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<f64, String> {
        self.deeper()?;
        let v = if self.eat('-') {
            -self.unary()?
        } else if self.eat('+') {
            self.unary()?
        } else {
            let base = self.primary()?;
            if self.eat('^') {
                base.powf(self.unary()?)
            } else {
                base
            }
        };
        self.depth -= 1;
        Ok(v)
    }

    fn primary(&mut self) -> Result<f64, String> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(n)
            }
            Some(Tok::Op('(')) => {
                self.pos += 1;
                let v = self.expr()?;
                if !self.eat(')') {
                    return Err("missing `)`".into());
                }
                Ok(v)
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                match name.as_str() {
                    "pi" | "π" => return Ok(std::f64::consts::PI),
                    "e" => return Ok(std::f64::consts::E),
                    "tau" => return Ok(std::f64::consts::TAU),
                    _ => {}
                }
                let args = if self.eat('(') {
                    let mut args = vec![self.expr()?];
                    while self.eat(',') {
                        args.push(self.expr()?);
                    }
                    if !self.eat(')') {
                        return Err("missing `)`".into());
                    }
                    args
                } else {
                    // "sqrt 16", as spoken.
                    vec![self.unary()?]
                };
                apply(&name, &args)
            }
            Some(Tok::Op(c)) => Err(format!("unexpected `{c}`")),
            None => Err("the expression ends too early".into()),
        }
    }
}

fn apply(name: &str, args: &[f64]) -> Result<f64, String> {
    let one = |f: fn(f64) -> f64| -> Result<f64, String> {
        match args {
            [x] => Ok(f(*x)),
            _ => Err(format!("`{name}` takes one argument")),
        }
    };
    match name {
        "sqrt" => match args {
            [x] if *x < 0.0 => Err("square root of a negative number".into()),
            _ => one(f64::sqrt),
        },
        "abs" => one(f64::abs),
        "sin" => one(f64::sin),
        "cos" => one(f64::cos),
        "tan" => one(f64::tan),
        "asin" => one(f64::asin),
        "acos" => one(f64::acos),
        "atan" => one(f64::atan),
        "ln" => one(f64::ln),
        "log" | "log10" => one(f64::log10),
        "log2" => one(f64::log2),
        "exp" => one(f64::exp),
        "round" => one(f64::round),
        "floor" => one(f64::floor),
        "ceil" => one(f64::ceil),
        "min" | "max" if !args.is_empty() => Ok(args.iter().copied().fold(
            if name == "min" {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            },
            if name == "min" { f64::min } else { f64::max },
        )),
        "pow" => match args {
            [a, b] => Ok(a.powf(*b)),
            _ => Err("`pow` takes two arguments".into()),
        },
        other => Err(format!("unknown function or name `{other}`")),
    }
}

/// Evaluates an expression (spoken forms accepted).
pub fn evaluate(expression: &str) -> Result<f64, String> {
    if expression.chars().count() > MAX_EXPRESSION_CHARS {
        return Err(format!(
            "the expression is longer than {MAX_EXPRESSION_CHARS} characters"
        ));
    }
    let text = normalize_spoken(expression);
    let toks = lex(&text)?;
    if toks.is_empty() {
        return Err("there is nothing to calculate".into());
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    if let Some(t) = p.peek() {
        return Err(format!(
            "unexpected {}",
            match t {
                Tok::Num(n) => format!("number {n}"),
                Tok::Ident(s) => format!("`{s}`"),
                Tok::Op(c) => format!("`{c}`"),
            }
        ));
    }
    if !v.is_finite() {
        return Err("the result is not a finite number".into());
    }
    Ok(v)
}

/// A result as JSON and as text: whole numbers without a fraction, others to 10
/// significant digits.
pub fn format_number(v: f64) -> (Value, String) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let i = v as i64;
        (json!(i), i.to_string())
    } else {
        let rounded: f64 = format!("{v:.9e}").parse().unwrap_or(v);
        let text = format!("{rounded}");
        (json!(rounded), text)
    }
}

#[async_trait::async_trait]
impl Tool for CalculatorTool {
    fn name(&self) -> &str {
        "calculator"
    }

    fn description(&self) -> &str {
        "Evaluates an arithmetic expression exactly: + - * / % ^, parentheses, sqrt, abs, sin, cos, tan, ln, log, exp, round, min, max, pi, e. Use it for any calculation."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "description": "e.g. \"12*7\", \"(3+4)^2 / 7\", \"20 percent of 80\"",
                    "minLength": 1,
                    "maxLength": MAX_EXPRESSION_CHARS
                }
            },
            "required": ["expression"],
            "additionalProperties": false
        })
    }

    fn output_schema(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"result": {"type": "number"}, "text": {"type": "string"}},
            "required": ["expression", "result", "text"]
        }))
    }

    async fn call(&self, args: Value, _: ToolContext) -> Result<Value, ToolFailure> {
        let expression = args
            .get("expression")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let v = evaluate(expression).map_err(ToolFailure::Failed)?;
        let (result, text) = format_number(v);
        Ok(json!({"expression": expression, "result": result, "text": text}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        for (e, want) in [
            ("12*7", 84.0),
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("7/2", 3.5),
            ("2^3^2", 512.0),
            ("-2^2", -4.0),
            ("10 % 4", 2.0),
            ("sqrt(16) + abs(-2)", 6.0),
            ("max(1, 5, 3)", 5.0),
            ("1e3 + 2.5E-1", 1000.25),
            ("1,000,000 / 4", 250_000.0),
            ("pow(2, 10)", 1024.0),
        ] {
            assert_eq!(evaluate(e), Ok(want), "{e}");
        }
        assert!((evaluate("2*pi").expect("pi") - std::f64::consts::TAU).abs() < 1e-12);
    }

    #[test]
    fn spoken_forms() {
        for (e, want) in [
            ("12 times 7", 84.0),
            ("what is 3 plus 4?", f64::NAN),
            ("20 percent of 80", 16.0),
            ("square root of 81", 9.0),
            ("5 squared", 25.0),
            ("100 divided by 8", 12.5),
            ("2 to the power of 8", 256.0),
            ("3 x 4", 12.0),
            ("9 minus 10", -1.0),
        ] {
            if want.is_nan() {
                assert!(
                    evaluate(e).is_err(),
                    "the words around are the router's job: {e}"
                );
            } else {
                assert_eq!(evaluate(e), Ok(want), "{e}");
            }
        }
    }

    #[test]
    fn errors_are_messages_not_panics() {
        for e in [
            "", "1/0", "5 % 0", "2 +", "(1", "1)", "foo(2)", "sqrt(-1)", "1 $ 2", "10^400", "min()",
        ] {
            assert!(evaluate(e).is_err(), "{e}");
        }
        let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
        assert!(evaluate(&deep[..deep.len().min(256)]).is_err());
        let nested = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(
            evaluate(&nested),
            Err("the expression is nested too deeply".into())
        );
        assert!(evaluate(&"1+".repeat(200)).is_err(), "too long");
    }

    #[test]
    fn numbers_are_formatted_for_speech() {
        assert_eq!(format_number(84.0).1, "84");
        assert_eq!(format_number(3.5).1, "3.5");
        assert_eq!(format_number(1.0 / 3.0).1, "0.3333333333");
        assert_eq!(format_number(-4.0).0, json!(-4));
    }
}

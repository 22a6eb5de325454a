//! The shell's permission rules (`[tools.shell] allow/ask/deny`): glob-like patterns over
//! a command line, `*` for any text; a trailing ` *` also matches nothing (`git diff *`
//! matches `git diff`).
//!
//! A command line is split into its simple commands (at `;`, `&&`, `||`, `|`, `&` and
//! newlines, outside quotes), each stripped of leading `NAME=value` assignments. Then:
//! a deny rule matching any part (or the whole line) denies; otherwise each part takes
//! the most specific matching allow/ask rule (most literal characters; a tie goes to ask),
//! or the default; the strictest part decides. Command substitution (`$(...)`, backticks)
//! and redirection to or from a file cannot be judged by patterns: such a line asks at
//! least. These rules guard against mistakes; they are not a sandbox (`/bin/rm` is not
//! `rm`).

use regex::Regex;

use crate::tools::registry::{stricter, CallPermission, Permission};

/// One pattern.
#[derive(Debug, Clone)]
pub struct Rule {
    /// As written in the config.
    pub text: String,
    re: Regex,
    /// Literal characters: the more, the more specific.
    specificity: usize,
}

impl Rule {
    /// Compiles a pattern (`*` = any text).
    pub fn new(text: &str) -> Result<Rule, String> {
        let norm = squash(text);
        if norm.is_empty() {
            return Err("an empty shell rule".into());
        }
        let (body, optional_args) = match norm.strip_suffix(" *") {
            Some(b) => (b, true),
            None => (norm.as_str(), false),
        };
        let mut re = String::from("^");
        for (i, part) in body.split('*').enumerate() {
            if i > 0 {
                re.push_str(".*");
            }
            re.push_str(&regex::escape(part));
        }
        if optional_args {
            re.push_str("(?: .*)?");
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|e| format!("shell rule `{text}`: {e}"))?;
        Ok(Rule {
            text: text.to_string(),
            re,
            specificity: norm.chars().filter(|c| *c != '*').count(),
        })
    }

    /// Does it match this (squashed) command?
    pub fn matches(&self, command: &str) -> bool {
        self.re.is_match(command)
    }
}

/// The rule sets.
#[derive(Debug, Clone)]
pub struct ShellRules {
    allow: Vec<Rule>,
    ask: Vec<Rule>,
    deny: Vec<Rule>,
    default: Permission,
}

fn compile(list: &[String]) -> Result<Vec<Rule>, String> {
    list.iter().map(|t| Rule::new(t)).collect()
}

/// Runs of whitespace made one space, ends trimmed.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A command line cut into simple commands, and whether it uses what patterns cannot
/// judge (substitution, file redirection, an unclosed quote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub parts: Vec<String>,
    pub opaque: Option<&'static str>,
}

/// Splits a command line at its control operators, outside quotes.
pub fn split_command(line: &str) -> Parsed {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut opaque = None;
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let (mut single, mut double) = (false, false);
    let flush = |cur: &mut String, parts: &mut Vec<String>| {
        let s = squash(cur);
        if !s.is_empty() {
            parts.push(s);
        }
        cur.clear();
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if single {
            if c == '\'' {
                single = false;
            }
            cur.push(c);
            i += 1;
            continue;
        }
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = next {
                    cur.push(n);
                }
                i += 2;
                continue;
            }
            '"' => double = !double,
            '\'' if !double => single = true,
            '`' => opaque = Some("command substitution"),
            '$' if next == Some('(') => opaque = Some("command substitution"),
            '<' | '>' if !double => {
                if next == Some('(') {
                    opaque = Some("process substitution");
                } else if !harmless_redirect(&chars[i..]) {
                    opaque = Some("redirection to or from a file");
                }
            }
            ';' | '\n' if !double => {
                flush(&mut cur, &mut parts);
                i += 1;
                continue;
            }
            '&' | '|' if !double => {
                // `>&2` and `2>&1` are redirections, not operators.
                if c == '&' && cur.ends_with('>') {
                    cur.push(c);
                    i += 1;
                    continue;
                }
                flush(&mut cur, &mut parts);
                i += if next == Some(c) || (c == '|' && next == Some('&')) {
                    2
                } else {
                    1
                };
                continue;
            }
            _ => {}
        }
        cur.push(c);
        i += 1;
    }
    if single || double {
        opaque = Some("an unclosed quote");
    }
    flush(&mut cur, &mut parts);
    let parts = parts.into_iter().map(|p| strip_assignments(&p)).collect();
    Parsed { parts, opaque }
}

/// `>&N`, `N>&M`, `>/dev/null`, `< /dev/null`: no file of the project is touched.
fn harmless_redirect(rest: &[char]) -> bool {
    let s: String = rest.iter().take(16).collect();
    let s = s.trim_start_matches(['<', '>']);
    if s.starts_with('&') {
        return true;
    }
    s.trim_start().starts_with("/dev/null")
}

/// `A=1 B=2 cmd args` → `cmd args`.
fn strip_assignments(part: &str) -> String {
    let mut words = part.split(' ').peekable();
    while let Some(w) = words.peek() {
        let is_assignment = w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        });
        if !is_assignment {
            break;
        }
        words.next();
    }
    words.collect::<Vec<_>>().join(" ")
}

impl ShellRules {
    /// Compiles the rule lists.
    pub fn new(
        allow: &[String],
        ask: &[String],
        deny: &[String],
        default: Permission,
    ) -> Result<ShellRules, String> {
        Ok(ShellRules {
            allow: compile(allow)?,
            ask: compile(ask)?,
            deny: compile(deny)?,
            default,
        })
    }

    /// No rules; every command gets `default`.
    pub fn none(default: Permission) -> ShellRules {
        ShellRules {
            allow: Vec::new(),
            ask: Vec::new(),
            deny: Vec::new(),
            default,
        }
    }

    /// The permission a command line needs, and which rule said so.
    pub fn decide(&self, line: &str) -> CallPermission {
        let parsed = split_command(line);
        let whole = squash(line);
        let candidates =
            std::iter::once(whole.as_str()).chain(parsed.parts.iter().map(String::as_str));
        for part in candidates {
            if let Some(rule) = self.deny.iter().find(|r| r.matches(part)) {
                return CallPermission {
                    permission: Permission::Deny,
                    why: format!("run `{part}` (tools.shell.deny `{}`)", rule.text),
                };
            }
        }
        let mut result = CallPermission {
            permission: Permission::Safe,
            why: String::new(),
        };
        if parsed.parts.is_empty() {
            return CallPermission {
                permission: self.default,
                why: "an empty command".into(),
            };
        }
        for part in &parsed.parts {
            let best = self
                .allow
                .iter()
                .map(|r| (r, Permission::Safe))
                .chain(self.ask.iter().map(|r| (r, Permission::Ask)))
                .filter(|(r, _)| r.matches(part))
                .max_by_key(|(r, p)| (r.specificity, *p == Permission::Ask));
            let (permission, why) = match best {
                Some((r, Permission::Safe)) => {
                    (Permission::Safe, format!("tools.shell.allow `{}`", r.text))
                }
                Some((r, _)) => (Permission::Ask, format!("tools.shell.ask `{}`", r.text)),
                None => (
                    self.default,
                    format!("no tools.shell rule matches `{part}`"),
                ),
            };
            if stricter(result.permission, permission) != result.permission || result.why.is_empty()
            {
                result = CallPermission { permission, why };
            }
        }
        if let Some(what) = parsed.opaque {
            if result.permission == Permission::Safe {
                result = CallPermission {
                    permission: Permission::Ask,
                    why: format!("the command uses {what}, which the rules cannot judge"),
                };
            }
        }
        result
    }
}

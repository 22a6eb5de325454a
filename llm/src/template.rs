//! The chat template: the GGUF's own `tokenizer.chat_template` (Jinja), rendered with
//! minijinja the way Hugging Face's `apply_chat_template` does (trim_blocks, lstrip_blocks,
//! Python string methods, `raise_exception`). A GGUF without one falls back to its
//! architecture's format (Gemma, Phi-3) or ChatML.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::gguf::{Gguf, Value};

/// ChatML, used only when the GGUF carries no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turns, as llama.cpp's built-in `gemma` template writes them: system text goes
/// at the start of the first user turn, the assistant is `model`, the answer starts after
/// `<start_of_turn>model` (the tokenizer adds BOS).
pub const GEMMA: &str = "{%- set sys = namespace(text='') -%}{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set sys.text = sys.text + (m['content'] | trim) -%}{%- else -%}{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}{{ '<start_of_turn>' + role + '\n' }}{%- if sys.text and role != 'model' -%}{{ sys.text + '\n\n' }}{%- set sys.text = '' -%}{%- endif -%}{{ (m['content'] | trim) + '<end_of_turn>\n' }}{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// Phi-3's turns, as llama.cpp's built-in `phi3` template writes them.
pub const PHI3: &str = "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";

/// One message as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Did the GGUF carry it (false: the ChatML fallback)?
    pub from_gguf: bool,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("from_gguf", &self.from_gguf)
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Compiles `source`. `bos`/`eos` are the token texts templates may refer to.
    pub fn new(
        source: &str,
        bos: &str,
        eos: &str,
        from_gguf: bool,
    ) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| format!("template syntax: {e}"))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("the chat template does not compile: {e}"))?;
        Ok(ChatTemplate {
            env,
            from_gguf,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The GGUF's template (`tokenizer.chat_template`); when it has none, Gemma's turn
    /// format for Gemma models, Phi-3's for phi3, else ChatML (Qwen's format).
    pub fn from_gguf(g: &Gguf, bos: &str, eos: &str) -> Result<ChatTemplate, String> {
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        match g.get("tokenizer.chat_template").and_then(Value::as_str) {
            Some(src) if !src.trim().is_empty() => ChatTemplate::new(src, bos, eos, true),
            _ if arch.starts_with("gemma") => ChatTemplate::new(GEMMA, bos, eos, false),
            _ if arch == "phi3" => ChatTemplate::new(PHI3, bos, eos, false),
            _ => {
                tracing::warn!(
                    path = %g.path.display(),
                    "the GGUF has no tokenizer.chat_template; using ChatML"
                );
                ChatTemplate::new(CHATML, bos, eos, false)
            }
        }
    }

    /// The prompt for `messages`, ending where the assistant's answer starts.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| format!("chat template: {e}"))?;
        tmpl.render(minijinja::context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => true,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| format!("the chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_fallback_renders() {
        let t = ChatTemplate::new(CHATML, "", "", false).expect("compiles");
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")])
            .expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_turns_render() {
        let t = ChatTemplate::new(GEMMA, "<bos>", "<eos>", false).expect("compiles");
        let out = t
            .render(&[
                msg("system", "Be brief."),
                msg("user", "Hi"),
                msg("assistant", "Hello."),
                msg("user", "Capital of France?"),
            ])
            .expect("renders");
        assert_eq!(
            out,
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn phi3_turns_render() {
        let t = ChatTemplate::new(PHI3, "<s>", "<|endoftext|>", false).expect("compiles");
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")])
            .expect("renders");
        assert_eq!(
            out,
            "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{{ m.content.strip().upper() }}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "", true).expect("compiles");
        assert_eq!(t.render(&[msg("user", "  hi  ")]).expect("renders"), "HI\n");
        let err = t.render(&[msg("tool", "x")]).expect_err("raises");
        assert!(err.contains("no tools"), "{err}");
    }
}

//! Chat prompts. SmolLM2, Qwen2 and other instruct models use ChatML; the
//! template is chosen from the vocabulary, since rendering arbitrary Jinja
//! templates is out of scope.

use crate::error::{Error, Result};
use crate::model::tokenizer::ModelTokenizer;

/// Formats one user turn for an instruct model and opens the assistant turn.
/// Returns the prompt text and the id of the token that ends a turn.
pub fn chat_prompt(
    tokenizer: &ModelTokenizer,
    user: &str,
    system: Option<&str>,
) -> Result<(String, i64)> {
    let mut turns = Vec::new();
    if let Some(system) = system {
        turns.push(("system", system));
    }
    turns.push(("user", user));
    chat_turns(tokenizer, &turns)
}

/// Formats a conversation of `(role, content)` turns (`system`, `user`,
/// `assistant`) in ChatML and opens the assistant's next turn. Returns the
/// prompt text and the id of the token that ends a turn.
pub fn chat_turns(tokenizer: &ModelTokenizer, turns: &[(&str, &str)]) -> Result<(String, i64)> {
    let (Some(_), Some(end)) = (
        tokenizer.token_id("<|im_start|>"),
        tokenizer.token_id("<|im_end|>"),
    ) else {
        return Err(Error::InvalidArgument(
            "chat: this model's vocabulary has no ChatML tokens (<|im_start|>, <|im_end|>)".into(),
        ));
    };
    let mut text = String::new();
    for (role, content) in turns {
        if !matches!(*role, "system" | "user" | "assistant") {
            return Err(Error::InvalidArgument(format!(
                "chat: role `{role}` is not system, user or assistant"
            )));
        }
        text.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    text.push_str("<|im_start|>assistant\n");
    Ok((text, end))
}

/// The fixed system prompt a ChatML template inserts when the conversation has
/// none (SmolLM2: "You are a helpful AI assistant named SmolLM, ..."), read
/// from the template's text.
pub fn default_system_prompt(template: &str) -> Option<String> {
    let start = "<|im_start|>system";
    let at = template.find(start)? + start.len();
    let rest = &template[at..];
    let rest = rest
        .strip_prefix("\\n")
        .or_else(|| rest.strip_prefix('\n'))?;
    let end = rest.find("<|im_end|>")?;
    let prompt = &rest[..end];
    // A template that splices in the user's system message is not a default.
    (!prompt.contains('{') && !prompt.contains('\'') && !prompt.is_empty())
        .then(|| prompt.to_string())
}

#[cfg(test)]
mod tests {
    use super::default_system_prompt;

    #[test]
    fn finds_a_literal_default_system_prompt() {
        let t = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are SmolLM.<|im_end|>\\n' }}{% endif %}";
        assert_eq!(default_system_prompt(t).as_deref(), Some("You are SmolLM."));
        let spliced = "{{ '<|im_start|>system\\n' + message['content'] + '<|im_end|>' }}";
        assert_eq!(default_system_prompt(spliced), None);
    }
}

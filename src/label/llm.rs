//! One-line feature labels written by a language model from a feature's
//! explanation words. The library holds the prompt, the clean-up and an
//! OpenAI-compatible HTTP client; generating with the loaded local model is
//! passed in as a function by the caller, so this layer does not depend on
//! generation.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::{generate, GenerateConfig, LoadedModel, SamplingConfig};

/// Writes a label from a prompt.
pub type LabelFn<'a> = dyn FnMut(&str) -> Result<String> + 'a;

/// The request put to the model: two worked examples, then the feature's
/// words (small local models follow the pattern far better than an
/// instruction alone).
pub fn label_prompt(words: &[&str]) -> String {
    format!(
        "Name the topic each list of words shares, in at most five words.\n\n\
         Words: lava, volcano, eruption, magma, ash\nTopic: volcanoes\n\n\
         Words: violin, melody, orchestra, chord, tempo\nTopic: music\n\n\
         Words: {}\nTopic:",
        words.join(", ")
    )
}

/// The first non-empty line of a reply, without quotes, markup or a
/// `Label:` prefix, at most 80 characters; `None` when nothing is left.
pub fn clean_label(reply: &str) -> Option<String> {
    let line = reply.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = ["Label:", "label:", "Topic:", "topic:"]
        .iter()
        .find_map(|prefix| line.strip_prefix(prefix))
        .unwrap_or(line);
    let line = line
        .trim()
        .trim_matches(|c: char| c == '"' || c == '*' || c == '\'' || c == '.');
    let label: String = line.chars().take(80).collect();
    let label = label.trim().to_string();
    (!label.is_empty()).then_some(label)
}

/// A chat-completions endpoint (OpenAI, vLLM, llama.cpp server, Ollama...).
#[derive(Debug, Clone)]
pub struct HttpLabeller {
    /// `…/v1` or the full `…/chat/completions` address.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: std::time::Duration,
}

impl HttpLabeller {
    fn endpoint(&self) -> String {
        let url = self.url.trim_end_matches('/');
        if url.ends_with("/chat/completions") {
            url.to_string()
        } else {
            format!("{url}/chat/completions")
        }
    }

    /// Sends `prompt` as one user message and returns the reply's text.
    pub fn complete(&self, prompt: &str) -> Result<String> {
        let body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 24,
            "temperature": 0.0,
        });
        let endpoint = self.endpoint();
        let agent = ureq::AgentBuilder::new().timeout(self.timeout).build();
        let mut request = agent
            .post(&endpoint)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let fail =
            |reason: String| Error::InvalidArgument(format!("labelling via {endpoint}: {reason}"));
        let response = request
            .send_string(&body.to_string())
            .map_err(|e| match e {
                ureq::Error::Status(code, r) => fail(format!(
                    "HTTP {code}: {}",
                    r.into_string()
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect::<String>()
                )),
                other => fail(other.to_string()),
            })?;
        let text = response.into_string().map_err(|e| fail(e.to_string()))?;
        let reply: Value =
            serde_json::from_str(&text).map_err(|e| fail(format!("reply is not JSON: {e}")))?;
        reply["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                fail(format!(
                    "no choices[0].message.content in {}",
                    text.chars().take(300).collect::<String>()
                ))
            })
    }
}

/// A label from the loaded model: greedy completion of the few-shot prompt
/// (as plain text, which small instruct models continue more faithfully
/// than a chat turn), up to the end of the line.
pub fn local_label(model: &LoadedModel, prompt: &str) -> Result<String> {
    let tok = &model.tokenizer;
    let mut stop_ids = tok.eos_ids().to_vec();
    stop_ids.extend(tok.encode("\n", false)?);
    let ids = tok.encode(prompt, true)?;
    let config = GenerateConfig {
        max_new_tokens: 12,
        sampling: SamplingConfig {
            temperature: 0.0,
            ..SamplingConfig::default()
        },
        stop_ids: stop_ids.clone(),
    };
    let out = generate(&model.model, &[ids], &config, &mut Hooks::new(), |_, _| {})?;
    let kept: Vec<i64> = out[0]
        .iter()
        .copied()
        .filter(|id| !stop_ids.contains(id))
        .collect();
    tok.decode(&kept)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn cleans_replies() {
        assert_eq!(
            clean_label("\n  Label: \"Volcanoes\".\nmore").as_deref(),
            Some("Volcanoes")
        );
        assert_eq!(clean_label("**geology**").as_deref(), Some("geology"));
        assert_eq!(clean_label("  \n \n"), None);
        assert_eq!(clean_label(&"x".repeat(200)).map(|l| l.len()), Some(80));
    }

    /// A one-shot HTTP server standing in for a chat-completions endpoint.
    fn serve_once(status: &str, body: &str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            reader.get_mut().write_all(reply.as_bytes()).unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (format!("http://{addr}/v1"), handle)
    }

    #[test]
    fn talks_to_a_chat_completions_endpoint() {
        let (url, server) = serve_once(
            "200 OK",
            r#"{"choices":[{"message":{"role":"assistant","content":"Volcanic activity"}}]}"#,
        );
        let labeller = HttpLabeller {
            url,
            model: "tiny".into(),
            api_key: Some("secret".into()),
            timeout: std::time::Duration::from_secs(10),
        };
        let reply = labeller
            .complete(&label_prompt(&["lava", "volcano"]))
            .unwrap();
        assert_eq!(reply, "Volcanic activity");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /v1/chat/completions"),
            "{request}"
        );
        assert!(request.contains("Bearer secret"));
        assert!(request.contains("lava, volcano"));
    }

    #[test]
    fn endpoint_errors_are_clear() {
        let (url, server) = serve_once("500 Internal Server Error", r#"{"error":"boom"}"#);
        let labeller = HttpLabeller {
            url,
            model: "tiny".into(),
            api_key: None,
            timeout: std::time::Duration::from_secs(10),
        };
        let err = labeller.complete("hi").unwrap_err().to_string();
        assert!(err.contains("HTTP 500") && err.contains("boom"), "{err}");
        server.join().unwrap();
        let (url, server) = serve_once("200 OK", r#"{"nothing":1}"#);
        let labeller = HttpLabeller { url, ..labeller };
        let err = labeller.complete("hi").unwrap_err().to_string();
        assert!(err.contains("choices"), "{err}");
        server.join().unwrap();
    }
}

//! The fraud explainer: a language model that reads what the rule-based
//! scorer saw of a flagged purchase and writes a short explanation for the
//! admin who approves or rejects it. It advises; it never decides.
//!
//! Behind [`FraudExplainer`], with one implementation for any
//! OpenAI-compatible chat-completions API (OpenAI, Mistral, a local Ollama
//! or llama.cpp server) on the `async-openai` client with a configurable base
//! URL. Every call has a timeout and goes through a circuit breaker
//! ([`crate::breaker`], gauge `fraud_explainer_circuit_state`). The prompt is
//! built by `services::explanations` and never holds personal data; the key
//! is never logged.

use std::time::Duration;

use async_openai::{
    Client,
    config::OpenAIConfig,
    error::OpenAIError,
    middleware::ReqwestService,
    types::chat::{
        ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
        ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs,
    },
};
use futures::future::BoxFuture;

use crate::{
    breaker::{Breaker, CircuitState, Guarded, Refused},
    config::ExplainerConfig,
};

/// What is sent: the instructions, and the purchase's facts as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

/// The model's answer, as it came, with the provider's token counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub text: String,
    /// The model that answered, as the provider names it.
    pub model: String,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ExplainerError {
    /// Worth another attempt later: a timeout, a 5xx, a 429, a broken connection.
    #[error("the explainer is unavailable: {0}")]
    Unavailable(String),
    /// Asking again will not help: the request or our configuration is wrong
    /// (4xx), or the answer is unusable.
    #[error("the explainer refused: {0}")]
    Refused(String),
    /// The circuit breaker is open; nothing was sent.
    #[error("the fraud explainer's circuit breaker is open")]
    CircuitOpen,
}

impl ExplainerError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ExplainerError::Refused(_))
    }

    fn is_outage(&self) -> bool {
        matches!(self, ExplainerError::Unavailable(_))
    }
}

/// Writes explanations of flagged purchases.
pub trait FraudExplainer: Send + Sync {
    fn explain<'a>(&'a self, prompt: &'a Prompt) -> BoxFuture<'a, Result<Answer, ExplainerError>>;
}

/// An OpenAI-compatible chat-completions API.
#[derive(Clone)]
pub struct OpenAiExplainer {
    client: Client<OpenAIConfig>,
    model: String,
    timeout: Duration,
    max_tokens: u32,
    breaker: Breaker,
}

impl OpenAiExplainer {
    /// `None` when the explainer is off (no base URL).
    pub fn new(cfg: &ExplainerConfig) -> Option<Self> {
        let url = cfg.url.as_ref()?;
        // async-openai's TLS comes without a crypto provider; ring is the
        // one the rest of the process uses. A second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = OpenAIConfig::new()
            .with_api_base(url)
            .with_api_key(cfg.key.as_ref().map_or("", |k| k.expose()))
            // Never pick these up from the process environment.
            .with_org_id("")
            .with_project_id("");
        Some(Self {
            // The plain transport: the client's default one retries 5xx and
            // 429 on its own, hidden from the job's retry policy and the breaker.
            client: Client::with_config(config).with_http_service(ReqwestService::default()),
            model: cfg.model.clone(),
            timeout: cfg.timeout,
            max_tokens: cfg.max_tokens,
            breaker: Breaker::new(
                Guarded {
                    name: "fraud_explainer",
                    what: "fraud explainer",
                    waiting: "explanations wait",
                },
                cfg.breaker_failures,
                cfg.breaker_open,
                cfg.breaker_open_max,
            ),
        })
    }

    pub fn breaker_state(&self) -> CircuitState {
        self.breaker.state()
    }

    async fn send(&self, prompt: &Prompt) -> Result<Answer, ExplainerError> {
        let messages: Vec<ChatCompletionRequestMessage> = vec![
            ChatCompletionRequestSystemMessage::from(prompt.system.as_str()).into(),
            ChatCompletionRequestUserMessage::from(prompt.user.as_str()).into(),
        ];
        let request = CreateChatCompletionRequestArgs::default()
            .model(&self.model)
            .messages(messages)
            .max_tokens(self.max_tokens)
            .temperature(0.2)
            .build()
            .map_err(|e| ExplainerError::Refused(e.to_string()))?;
        let chat = self.client.chat();
        let call = chat.create(request);
        let res = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(classify)?,
            Err(_) => {
                return Err(ExplainerError::Unavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )));
            }
        };
        let text = res
            .choices
            .into_iter()
            .find_map(|c| c.message.content)
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| ExplainerError::Refused("the answer has no text".into()))?;
        Ok(Answer {
            text,
            model: if res.model.is_empty() {
                self.model.clone()
            } else {
                res.model
            },
            prompt_tokens: res.usage.as_ref().map(|u| u.prompt_tokens),
            completion_tokens: res.usage.as_ref().map(|u| u.completion_tokens),
        })
    }
}

/// 5xx, 429, 408 and transport failures are outages worth retrying; any
/// other refusal is for good. The provider's message is cut short: it is
/// logged and stored, and must not carry the request back.
fn classify(e: OpenAIError) -> ExplainerError {
    let short = |s: String| s.chars().take(200).collect::<String>();
    match e {
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            let msg = short(format!("HTTP {status}: {}", api.api_error.message));
            if status >= 500 || status == 429 || status == 408 {
                ExplainerError::Unavailable(msg)
            } else {
                if matches!(status, 401 | 403 | 404) {
                    tracing::error!(
                        status,
                        "the fraud explainer refused the call; check FRAUD_EXPLAINER_URL, FRAUD_EXPLAINER_MODEL and FRAUD_EXPLAINER_KEY"
                    );
                }
                ExplainerError::Refused(msg)
            }
        }
        OpenAIError::Reqwest(r) => ExplainerError::Unavailable(short(r.to_string())),
        OpenAIError::JSONDeserialize(err, _) => {
            ExplainerError::Unavailable(short(format!("unreadable answer: {err}")))
        }
        other => ExplainerError::Refused(short(other.to_string())),
    }
}

fn observe(r: &Result<Answer, ExplainerError>) {
    let outcome = match r {
        Ok(_) => "ok",
        Err(ExplainerError::Unavailable(_)) => "unavailable",
        Err(ExplainerError::Refused(_)) => "refused",
        Err(ExplainerError::CircuitOpen) => "circuit_open",
    };
    metrics::counter!("fraud_explainer_calls_total", "outcome" => outcome).increment(1);
    if let Ok(a) = r {
        if let Some(n) = a.prompt_tokens {
            metrics::counter!("fraud_explainer_tokens_total", "kind" => "prompt")
                .increment(n.into());
        }
        if let Some(n) = a.completion_tokens {
            metrics::counter!("fraud_explainer_tokens_total", "kind" => "completion")
                .increment(n.into());
        }
    }
}

impl FraudExplainer for OpenAiExplainer {
    fn explain<'a>(&'a self, prompt: &'a Prompt) -> BoxFuture<'a, Result<Answer, ExplainerError>> {
        Box::pin(async move {
            let r = self
                .breaker
                .call(ExplainerError::is_outage, self.send(prompt))
                .await
                .map_err(|r| match r {
                    Refused::Inner(e) => e,
                    Refused::Open => ExplainerError::CircuitOpen,
                });
            observe(&r);
            r
        })
    }
}

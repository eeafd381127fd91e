//! The tool registry: each tool is a typed Rust function whose argument type derives its JSON
//! Schema (schemars), with a description and a timeout. Arguments from the model are
//! deserialized into that type before the function runs; a mismatch goes back to the model as
//! a tool error, never a crash.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use orchestrator_core::tools::{HITL_TOOL, ToolSpec};
use orchestrator_core::types::{RunOptions, ToolPolicy};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::StepContext;

mod builtin;
mod session;

pub use builtin::{HitlArgs, PlatformArgs, ReadArtifactArgs, TextStatsArgs, platform_limits};
pub(crate) use session::Turns;

/// Why a tool gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("{0}")]
    Failed(String),
}

type Handler = Arc<
    dyn Fn(Value, Arc<StepContext>) -> BoxFuture<'static, Result<Value, ToolError>> + Send + Sync,
>;

/// One tool: what the model is told about it, and the function behind it.
#[derive(Clone)]
pub struct Tool {
    pub name: &'static str,
    pub description: &'static str,
    pub timeout: Duration,
    /// The JSON Schema of the arguments, derived from their Rust type.
    pub parameters: Arc<Value>,
    handler: Handler,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The JSON Schema of `A`, without the meta fields providers do not want.
pub fn schema_of<A: JsonSchema>() -> Value {
    let mut schema = schemars::schema_for!(A).to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
        obj.remove("title");
    }
    schema
}

impl Tool {
    /// A tool from a typed async function: `f` runs only with arguments that deserialize into
    /// `A`.
    pub fn new<A, F, Fut>(
        name: &'static str,
        description: &'static str,
        timeout: Duration,
        f: F,
    ) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(A, Arc<StepContext>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler = Arc::new(
            move |args: Value, ctx: Arc<StepContext>| match parse_args::<A>(args) {
                Ok(a) => {
                    let f = f.clone();
                    async move { f(a, ctx).await.map_err(ToolError::Failed) }.boxed()
                }
                Err(e) => futures::future::ready(Err(e)).boxed(),
            },
        );
        Self {
            name,
            description,
            timeout,
            parameters: Arc::new(schema_of::<A>()),
            handler,
        }
    }

    pub fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.to_owned(),
            description: self.description.to_owned(),
            parameters: self.parameters.clone(),
        }
    }

    /// Validates the arguments and runs the function, within the tool's timeout.
    pub async fn call(&self, args: Value, ctx: Arc<StepContext>) -> Result<Value, ToolError> {
        match tokio::time::timeout(self.timeout, (self.handler)(args, ctx)).await {
            Ok(result) => result,
            Err(_) => Err(ToolError::Failed(format!(
                "timed out after {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// Deserializes the model's arguments into the tool's type, naming the offending field.
pub fn parse_args<A: DeserializeOwned>(args: Value) -> Result<A, ToolError> {
    let args = match args {
        // Some models send the arguments as a JSON string inside the JSON.
        Value::String(raw) => serde_json::from_str::<Value>(&raw).map_err(|e| {
            ToolError::InvalidArguments(format!("the arguments are not a JSON object: {e}"))
        })?,
        other => other,
    };
    serde_path_to_error::deserialize::<_, A>(args).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ToolError::InvalidArguments(inner.to_string())
        } else {
            ToolError::InvalidArguments(format!("{path}: {inner}"))
        }
    })
}

/// Every tool the specialists may be given, by name.
#[derive(Debug, Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<&'static str, Tool>,
}

impl ToolRegistry {
    /// The built-in tools: `text_stats`, `platform_constraints`, `read_artifact`, and
    /// `hitl_request` (carried out by the engine, not here).
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        for tool in builtin::all() {
            registry.register(tool);
        }
        registry
    }

    pub fn register(&mut self, tool: Tool) {
        self.tools.insert(tool.name, tool);
    }

    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.tools.keys().copied().collect()
    }

    /// The tools a step gets: the specialist's own, minus what the request's policy and
    /// allowlist exclude.
    pub fn for_step(&self, own: &[&str], options: &RunOptions) -> Toolset {
        if options.tool_policy == Some(ToolPolicy::Off) {
            return Toolset::default();
        }
        let tools = own
            .iter()
            .filter(|name| {
                options
                    .tools_allowlist
                    .as_ref()
                    .is_none_or(|allow| allow.iter().any(|a| a == *name))
            })
            .filter_map(|name| self.tools.get(name).cloned())
            .collect();
        Toolset {
            tools,
            required: options.tool_policy == Some(ToolPolicy::Required),
        }
    }
}

/// The tools offered to one step.
#[derive(Debug, Clone, Default)]
pub struct Toolset {
    pub tools: Vec<Tool>,
    /// The first model call must call a tool (`toolPolicy: required`).
    pub required: bool,
}

impl Toolset {
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.tools.iter().map(|t| t.name).collect()
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(Tool::spec).collect()
    }

    pub fn allows_hitl(&self) -> bool {
        self.get(HITL_TOOL).is_some()
    }
}

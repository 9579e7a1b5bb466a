//! The SAM template (`template.yaml`) read once for every test that checks it: the YAML with
//! CloudFormation's short tags (`!Ref X`, `!GetAtt X.Arn`, `!Sub '...'`, `!If [...]`, ...)
//! parsed into JSON, each tag written as its long form (`{"Ref": "X"}`, `{"Fn::GetAtt":
//! "X.Arn"}`, `{"Fn::Sub": "..."}`, `{"Fn::If": [...]}`), so that a tagged value is never
//! mistaken for a literal: `as_str()` of `!Ref X` is `None`. The lookups the tests repeat
//! (resources by type, a function's properties with SAM's `Globals`, its environment,
//! parameters and their defaults) and the readers of intrinsic calls ([`intrinsic`],
//! [`ref_name`], [`getatt`], [`text`]) come with it.
//!
//! The path is `template.yaml` at the repository's root, or `$FEATURIZE_TEMPLATE` (the IAM
//! tests re-run on edited copies: `infra/iam-drop-statement.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Map, Value};

/// The environment variable that points the tests at another template.
pub const PATH_VAR: &str = "FEATURIZE_TEMPLATE";

/// Why a template could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("{path}: {what}")]
    Unsupported { path: PathBuf, what: String },
}

/// The template's path: `$FEATURIZE_TEMPLATE`, else `template.yaml` at the repository's root.
pub fn path() -> PathBuf {
    std::env::var_os(PATH_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("template.yaml"))
}

/// The repository's root (this crate is `shared/testkit`).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("shared/testkit lies two levels under the repository's root")
}

/// The template at [`path`], read and parsed once per process. Panics (a test's clear
/// failure) when it cannot be read.
pub fn template() -> &'static Template {
    static PARSED: OnceLock<Template> = OnceLock::new();
    PARSED.get_or_init(|| Template::read(&path()).unwrap_or_else(|e| panic!("{e}")))
}

/// A parsed template: the document as JSON (it dereferences to it: `t["Parameters"]`).
#[derive(Debug, Clone)]
pub struct Template {
    path: PathBuf,
    doc: Value,
}

impl std::ops::Deref for Template {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.doc
    }
}

impl Template {
    /// Reads and parses the template at `path`.
    pub fn read(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `yaml` (named `path` in errors).
    pub fn parse(yaml: &str, path: &Path) -> Result<Self, TemplateError> {
        let doc: serde_norway::Value =
            serde_norway::from_str(yaml).map_err(|source| TemplateError::Yaml {
                path: path.to_path_buf(),
                source,
            })?;
        let doc = to_json(doc).map_err(|what| TemplateError::Unsupported {
            path: path.to_path_buf(),
            what,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            doc,
        })
    }

    /// Where it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The resources, by logical id. Panics if there is no `Resources` section.
    pub fn resources(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.doc["Resources"]
            .as_object()
            .expect("the template has no Resources")
            .iter()
            .map(|(id, r)| (id.as_str(), r))
    }

    /// The resources of one `Type`.
    pub fn of_type<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.resources()
            .filter(move |(_, r)| r["Type"].as_str() == Some(ty))
    }

    /// One resource. Panics if there is none of that id.
    pub fn resource(&self, id: &str) -> &Value {
        let r = &self.doc["Resources"][id];
        assert!(!r.is_null(), "template.yaml has no resource {id}");
        r
    }

    /// One resource's `Properties` (`Null` when it has none). Panics if there is no such
    /// resource.
    pub fn properties(&self, id: &str) -> &Value {
        &self.resource(id)["Properties"]
    }

    /// A function's property, falling back to `Globals.Function` (as SAM does); `Null` when
    /// neither sets it.
    pub fn function_property<'a>(&'a self, function: &'a Value, key: &str) -> &'a Value {
        match &function["Properties"][key] {
            Value::Null => &self.doc["Globals"]["Function"][key],
            v => v,
        }
    }

    /// A function's environment: `Globals.Function`'s variables overridden by its own.
    pub fn environment<'a>(&'a self, function: &'a Value) -> BTreeMap<&'a str, &'a Value> {
        let mut vars = variables(&self.doc["Globals"]["Function"]);
        vars.extend(variables(&function["Properties"]));
        vars
    }

    /// The `AWS::Serverless::Function`s built from `binary` ([`binary_of`]): (logical id,
    /// resource).
    pub fn functions_built_from<'a>(
        &'a self,
        binary: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.of_type("AWS::Serverless::Function")
            .filter(move |(_, f)| binary_of(f) == Some(binary))
    }

    /// A parameter's declaration (`Null` when there is none).
    pub fn parameter(&self, name: &str) -> &Value {
        &self.doc["Parameters"][name]
    }

    /// The parameters with a literal `Default` (string, number or boolean), as text.
    pub fn parameter_defaults(&self) -> BTreeMap<String, String> {
        self.parameters()
            .filter_map(|(name, p)| Some((name.to_string(), literal(&p["Default"])?)))
            .collect()
    }

    /// The parameters of type `CommaDelimitedList` (`!Ref` to one gives a list).
    pub fn list_parameters(&self) -> BTreeSet<String> {
        self.parameters()
            .filter(|(_, p)| p["Type"].as_str() == Some("CommaDelimitedList"))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    fn parameters(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.doc["Parameters"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, p)| (name.as_str(), p))
    }
}

/// The environment variables set on `x` (a function's `Properties`, or `Globals.Function`).
pub fn variables(x: &Value) -> BTreeMap<&str, &Value> {
    x["Environment"]["Variables"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}

/// Which binary an `AWS::Serverless::Function` is built from: its
/// `Metadata.BuildProperties.Binary`, else the last component of its `CodeUri`.
pub fn binary_of(function: &Value) -> Option<&str> {
    function["Metadata"]["BuildProperties"]["Binary"]
        .as_str()
        .or_else(|| {
            function["Properties"]["CodeUri"]
                .as_str()?
                .trim_end_matches('/')
                .rsplit('/')
                .next()
        })
}

/// A literal scalar as text (`"x"`, `3`, `true`); `None` for anything else.
pub fn literal(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An intrinsic function call: its name without `Fn::` (`Ref`, `Condition`, `GetAtt`, `Sub`,
/// ...) and its argument. `None` for anything else.
pub fn call(v: &Value) -> Option<(&str, &Value)> {
    let m = v.as_object().filter(|m| m.len() == 1)?;
    let (key, arg) = m.iter().next()?;
    match key.as_str() {
        "Ref" | "Condition" => Some((key.as_str(), arg)),
        other => Some((other.strip_prefix("Fn::")?, arg)),
    }
}

/// The argument of intrinsic function `name` (`Ref`, `GetAtt`, `If`, ...) when `v` calls it.
pub fn intrinsic<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    call(v).filter(|(n, _)| *n == name).map(|(_, arg)| arg)
}

/// `X` of `!Ref X`.
pub fn ref_name(v: &Value) -> Option<&str> {
    intrinsic(v, "Ref")?.as_str()
}

/// `(X, Attr)` of `!GetAtt X.Attr` or `!GetAtt [X, Attr]`.
pub fn getatt(v: &Value) -> Option<(&str, &str)> {
    match intrinsic(v, "GetAtt")? {
        Value::Array(s) if s.len() == 2 => Some((s[0].as_str()?, s[1].as_str()?)),
        other => other.as_str()?.split_once('.'),
    }
}

/// Whether `v` names the resource `id`: `!Ref id` or `!GetAtt id.<attr>`.
pub fn names(v: &Value, id: &str) -> bool {
    ref_name(v) == Some(id) || getatt(v).is_some_and(|(x, _)| x == id)
}

/// A string as written: a literal, or the template of `!Sub '...'` (its `${...}` left as they
/// are). `None` for anything else.
pub fn text(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| intrinsic(v, "Sub")?.as_str())
}

/// The YAML document as JSON, short tags as long forms.
fn to_json(v: serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Yaml;
    Ok(match v {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => number(&n)?,
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => {
            Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Yaml::String(s) => s,
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    other => return Err(format!("a mapping key that is not a scalar: {other:?}")),
                };
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
        Yaml::Tagged(tagged) => {
            let name = tagged.tag.to_string();
            let name = name.trim_start_matches('!');
            let key = match name {
                "Ref" | "Condition" => name.to_string(),
                _ => format!("Fn::{name}"),
            };
            let mut out = Map::new();
            out.insert(key, to_json(tagged.value)?);
            Value::Object(out)
        }
    })
}

fn number(n: &serde_norway::Number) -> Result<Value, String> {
    if let Some(i) = n.as_i64() {
        Ok(i.into())
    } else if let Some(u) = n.as_u64() {
        Ok(u.into())
    } else {
        n.as_f64()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("a number JSON cannot hold: {n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TINY: &str = r#"
Parameters:
  Size:
    Type: Number
    Default: 64
  Prefixes:
    Type: CommaDelimitedList
    Default: ''
  Name:
    Type: String
Conditions:
  IsBig: !Not [!Equals [!Ref Size, 1]]
Globals:
  Function:
    Timeout: 30
    Environment:
      Variables:
        BUCKET: !Sub '${AWS::StackName}-data'
        SIZE: '1'
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt Dlq.Arn
  Dlq:
    Type: AWS::SQS::Queue
  Worker:
    Type: AWS::Serverless::Function
    Metadata:
      BuildProperties:
        Binary: worker
    Properties:
      CodeUri: functions/other/
      Environment:
        Variables:
          SIZE: !If [IsBig, !Ref Size, !Ref AWS::NoValue]
          QUEUE: !Ref Queue
          ARN: !GetAtt [Queue, Arn]
          KEYS:
            Fn::Join: [',', !Ref Prefixes]
  Other:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/other/
      Timeout: 5
"#;

    fn tiny() -> Template {
        Template::parse(TINY, Path::new("tiny.yaml")).unwrap()
    }

    #[test]
    fn short_tags_become_their_long_forms() {
        let t = tiny();
        assert_eq!(
            t["Conditions"]["IsBig"],
            json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "Size"}, 1]}]})
        );
        let vars = t.environment(t.resource("Worker"));
        assert_eq!(
            vars["SIZE"],
            &json!({"Fn::If": ["IsBig", {"Ref": "Size"}, {"Ref": "AWS::NoValue"}]})
        );
        assert_eq!(
            vars["BUCKET"],
            &json!({"Fn::Sub": "${AWS::StackName}-data"})
        );
        // The long form in the YAML reads the same.
        assert_eq!(
            vars["KEYS"],
            &json!({"Fn::Join": [",", {"Ref": "Prefixes"}]})
        );
        // A tagged value is not a string.
        assert_eq!(vars["QUEUE"].as_str(), None);
        assert_eq!(t.path(), Path::new("tiny.yaml"));
    }

    #[test]
    fn intrinsic_calls_are_read_in_both_getatt_forms() {
        let t = tiny();
        let vars = t.environment(t.resource("Worker"));
        assert_eq!(ref_name(vars["QUEUE"]), Some("Queue"));
        assert_eq!(getatt(vars["ARN"]), Some(("Queue", "Arn")));
        let dlq = &t.properties("Queue")["RedrivePolicy"]["deadLetterTargetArn"];
        assert_eq!(getatt(dlq), Some(("Dlq", "Arn")));
        assert!(names(dlq, "Dlq") && !names(dlq, "Queue"));
        assert_eq!(call(vars["KEYS"]).map(|(n, _)| n), Some("Join"));
        assert_eq!(
            intrinsic(vars["SIZE"], "If").and_then(|a| a[0].as_str()),
            Some("IsBig")
        );
        assert_eq!(ref_name(&json!("Queue")), None);
        assert_eq!(text(vars["BUCKET"]), Some("${AWS::StackName}-data"));
        assert_eq!(text(&json!("plain")), Some("plain"));
        assert_eq!(text(vars["QUEUE"]), None);
    }

    #[test]
    fn lookups_by_type_globals_and_binary() {
        let t = tiny();
        let mut queues: Vec<&str> = t.of_type("AWS::SQS::Queue").map(|(id, _)| id).collect();
        queues.sort();
        assert_eq!(queues, ["Dlq", "Queue"]);
        let workers: Vec<&str> = t.functions_built_from("worker").map(|(id, _)| id).collect();
        assert_eq!(workers, ["Worker"]);
        let others: Vec<&str> = t.functions_built_from("other").map(|(id, _)| id).collect();
        assert_eq!(others, ["Other"], "Worker's Binary wins over its CodeUri");
        let other = t.resource("Other");
        assert_eq!(t.function_property(other, "Timeout"), &json!(5));
        assert_eq!(
            t.function_property(t.resource("Worker"), "Timeout"),
            &json!(30)
        );
        assert!(t.function_property(other, "MemorySize").is_null());
        // Globals' variables, overridden by the function's own.
        let vars = t.environment(t.resource("Worker"));
        assert_eq!(
            vars.keys().copied().collect::<Vec<_>>(),
            ["ARN", "BUCKET", "KEYS", "QUEUE", "SIZE"]
        );
        assert_eq!(t.environment(other)["SIZE"], &json!("1"));
    }

    #[test]
    fn parameters_with_defaults_and_lists() {
        let t = tiny();
        let defaults = t.parameter_defaults();
        assert_eq!(defaults.get("Size").map(String::as_str), Some("64"));
        assert_eq!(defaults.get("Prefixes").map(String::as_str), Some(""));
        assert!(!defaults.contains_key("Name"), "no Default");
        assert_eq!(
            t.list_parameters().into_iter().collect::<Vec<_>>(),
            ["Prefixes"]
        );
        assert_eq!(t.parameter("Size")["Type"], "Number");
        assert!(t.parameter("Missing").is_null());
    }

    #[test]
    #[should_panic(expected = "template.yaml has no resource Nope")]
    fn a_missing_resource_is_named() {
        tiny().resource("Nope");
    }

    #[test]
    fn errors_name_the_file() {
        let err = Template::parse("a: [", Path::new("broken.yaml")).unwrap_err();
        assert!(err.to_string().starts_with("parse broken.yaml: "), "{err}");
        let err = Template::read(Path::new("/nonexistent/template.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("read /nonexistent/template.yaml: "),
            "{err}"
        );
        let err = Template::parse("? [a]\n: 1\n", Path::new("keys.yaml")).unwrap_err();
        assert!(matches!(err, TemplateError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn the_repository_template_is_found_and_parses() {
        let t = Template::read(&repo_root().join("template.yaml")).unwrap();
        assert!(t.of_type("AWS::Serverless::Function").count() >= 4);
        assert!(t.functions_built_from("splitter").count() == 1);
    }
}

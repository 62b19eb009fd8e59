//! Checks HTTP requests and answers against the DigitalOcean OpenAPI spec
//! (`openapi/openapi-subset.yaml` plus `openapi/supplement.yaml`).
//!
//! OpenAPI 3.0 schemas are JSON Schema with a few differences; they are
//! turned into Draft 7 first: `nullable: true` becomes a `null` alternative,
//! and `format: uuid` gets a checker (Draft 7 has none). Beyond the schemas,
//! objects are checked for properties the spec does not declare anywhere
//! (the spec never forbids them, but a fake that invents fields would let
//! the client depend on fields the real API does not have).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonschema::{Draft, Validator};
use serde_json::{Map, Value, json};

const SUBSET: &str = include_str!("../../openapi/openapi-subset.yaml");
const SUPPLEMENT: &str = include_str!("../../openapi/supplement.yaml");

/// Problems loading the spec (a broken copy of the YAML).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the OpenAPI spec does not parse as YAML: {0}")]
    Yaml(String),
    #[error("the OpenAPI spec is missing {what}")]
    Missing { what: String },
    #[error("schema at {at} does not compile: {reason}")]
    Schema { at: String, reason: String },
}

/// Which side of the exchange a violation was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// One way a request or answer departs from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub direction: Direction,
    /// `operationId`, or `METHOD path` when no operation matched.
    pub operation: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {}: {}",
            self.direction, self.operation, self.detail
        )
    }
}

#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Clone, Debug)]
struct Param {
    name: String,
    location: String,
    required: bool,
    schema: Value,
}

#[derive(Clone, Debug)]
struct Operation {
    id: String,
    method: String,
    template: String,
    segments: Vec<Segment>,
    params: Vec<Param>,
    body: Option<(bool, Value)>,
    /// Status ("200", "default") → the resolved response object.
    responses: HashMap<String, Value>,
}

/// The matched operation and what was wrong with the request.
#[derive(Clone, Debug, Default)]
pub struct RequestCheck {
    pub operation: Option<String>,
    pub path_params: HashMap<String, String>,
    pub violations: Vec<String>,
}

/// The spec, ready to check exchanges. Cheap to clone.
#[derive(Clone)]
pub struct SpecValidator {
    root: Arc<Value>,
    ops: Arc<Vec<Operation>>,
    compiled: Arc<Mutex<HashMap<String, Arc<Validator>>>>,
}

impl std::fmt::Debug for SpecValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpecValidator")
            .field("operations", &self.ops.len())
            .finish()
    }
}

impl SpecValidator {
    /// Loads the embedded spec and supplement.
    pub fn load() -> Result<SpecValidator, SpecError> {
        let mut root: Value =
            serde_norway::from_str(SUBSET).map_err(|e| SpecError::Yaml(e.to_string()))?;
        let supplement: Value =
            serde_norway::from_str(SUPPLEMENT).map_err(|e| SpecError::Yaml(e.to_string()))?;
        if let (Some(paths), Some(extra)) = (
            root.get_mut("paths").and_then(Value::as_object_mut),
            supplement.get("paths").and_then(Value::as_object),
        ) {
            for (path, item) in extra {
                let entry = paths.entry(path.clone()).or_insert_with(|| json!({}));
                if let (Some(entry), Some(item)) = (entry.as_object_mut(), item.as_object()) {
                    for (method, op) in item {
                        entry.insert(method.clone(), op.clone());
                    }
                }
            }
        }
        // Keep only what validation needs: examples are large and unused.
        if let Some(c) = root.get_mut("components").and_then(Value::as_object_mut) {
            c.remove("examples");
        }
        openapi_to_json_schema(&mut root);
        let ops = collect_operations(&root)?;
        Ok(SpecValidator {
            root: Arc::new(root),
            ops: Arc::new(ops),
            compiled: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Every `operationId` the spec (with supplement) defines.
    pub fn operation_ids(&self) -> Vec<String> {
        self.ops.iter().map(|o| o.id.clone()).collect()
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut v = v;
        // References chain at most a few levels in this spec.
        for _ in 0..8 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix('#').and_then(|p| self.root.pointer(p)) {
                    Some(target) => v = target,
                    None => return v,
                },
                None => return v,
            }
        }
        v
    }

    fn find(&self, method: &str, path: &str) -> Option<(&Operation, HashMap<String, String>)> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        'ops: for op in self.ops.iter() {
            if !op.method.eq_ignore_ascii_case(method) || op.segments.len() != parts.len() {
                continue;
            }
            let mut params = HashMap::new();
            for (seg, part) in op.segments.iter().zip(&parts) {
                match seg {
                    Segment::Literal(l) if l == part => {}
                    Segment::Literal(_) => continue 'ops,
                    Segment::Param(name) => {
                        if part.is_empty() {
                            continue 'ops;
                        }
                        params.insert(name.clone(), percent_decode(part));
                    }
                }
            }
            return Some((op, params));
        }
        None
    }

    fn validator(&self, schema: &Value) -> Result<Arc<Validator>, String> {
        let key = schema.to_string();
        if let Some(v) = lock(&self.compiled).get(&key) {
            return Ok(v.clone());
        }
        let mut doc = Map::new();
        if let Some(schemas) = self.root.pointer("/components/schemas") {
            doc.insert("components".into(), json!({ "schemas": schemas }));
        }
        doc.insert("allOf".into(), json!([schema]));
        let compiled = jsonschema::options()
            .with_draft(Draft::Draft7)
            .should_validate_formats(true)
            .with_format("uuid", is_uuid)
            .build(&Value::Object(doc))
            .map_err(|e| e.to_string())?;
        let compiled = Arc::new(compiled);
        lock(&self.compiled).insert(key, compiled.clone());
        Ok(compiled)
    }

    fn check_value(&self, schema: &Value, instance: &Value, what: &str, out: &mut Vec<String>) {
        match self.validator(schema) {
            Ok(v) => {
                for e in v.iter_errors(instance) {
                    out.push(format!("{what} at {}: {e}", e.instance_path()));
                }
            }
            Err(e) => out.push(format!("{what}: the spec's schema does not compile: {e}")),
        }
        let mut undeclared = Vec::new();
        self.undeclared(&[schema], instance, "", &mut undeclared);
        for p in undeclared {
            out.push(format!("{what} at {p}: property not declared by the spec"));
        }
    }

    /// Checks a request. `headers` are (lowercase name, value) pairs.
    pub fn check_request(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        headers: &[(String, String)],
        body: &[u8],
    ) -> RequestCheck {
        let mut out = RequestCheck::default();
        let Some((op, path_params)) = self.find(method, path) else {
            out.violations
                .push(format!("{method} {path} matches no operation in the spec"));
            return out;
        };
        out.operation = Some(op.id.clone());
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        // securitySchemes.bearer_auth
        match header("authorization") {
            Some(v) if v.starts_with("Bearer ") && v.len() > 7 => {}
            _ => out
                .violations
                .push("no `Authorization: Bearer <token>` header (bearer_auth)".into()),
        }
        for p in &op.params {
            let value = match p.location.as_str() {
                "path" => path_params.get(&p.name).cloned(),
                "query" => query
                    .iter()
                    .find(|(k, _)| *k == p.name)
                    .map(|(_, v)| v.clone()),
                "header" => header(&p.name).map(str::to_owned),
                _ => None,
            };
            match value {
                None if p.required => out.violations.push(format!(
                    "required {} parameter `{}` is missing",
                    p.location, p.name
                )),
                None => {}
                Some(raw) => {
                    let instance = coerce(&raw, &p.schema);
                    self.check_value(
                        &p.schema,
                        &instance,
                        &format!("{} parameter `{}`", p.location, p.name),
                        &mut out.violations,
                    );
                }
            }
        }
        for (k, _) in query {
            if !op
                .params
                .iter()
                .any(|p| p.location == "query" && p.name == *k)
            {
                out.violations.push(format!(
                    "query parameter `{k}` is not declared for {} ({} {})",
                    op.id, op.method, op.template
                ));
            }
        }
        match (&op.body, body.is_empty()) {
            (Some((true, _)), true) => out.violations.push("the request body is required".into()),
            (None, false) => out
                .violations
                .push(format!("{} takes no request body", op.id)),
            (Some((_, schema)), false) => {
                match header("content-type") {
                    Some(ct) if ct.starts_with("application/json") => {}
                    other => out.violations.push(format!(
                        "request body sent with content-type {other:?}, not application/json"
                    )),
                }
                match serde_json::from_slice::<Value>(body) {
                    Ok(v) => self.check_value(schema, &v, "request body", &mut out.violations),
                    Err(e) => out
                        .violations
                        .push(format!("the request body is not JSON: {e}")),
                }
            }
            _ => {}
        }
        out.path_params = path_params;
        out
    }

    /// Checks an answer to `operation` (an `operationId`).
    pub fn check_response(
        &self,
        operation: &str,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Vec<String> {
        let mut out = Vec::new();
        let Some(op) = self.ops.iter().find(|o| o.id == operation) else {
            return vec![format!("no operation {operation} in the spec")];
        };
        let Some(resp) = op
            .responses
            .get(&status.to_string())
            .or_else(|| op.responses.get("default"))
        else {
            return vec![format!("status {status} is not declared for {operation}")];
        };
        if let Some(hs) = resp.get("headers").and_then(Value::as_object) {
            for (name, h) in hs {
                let h = self.resolve(h);
                match headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                    None => out.push(format!("status {status}: header `{name}` is missing")),
                    Some((_, v)) => {
                        if let Some(schema) = h.get("schema") {
                            self.check_value(
                                schema,
                                &coerce(v, schema),
                                &format!("header `{name}`"),
                                &mut out,
                            );
                        }
                    }
                }
            }
        }
        let schema = resp
            .get("content")
            .and_then(|c| c.get("application/json"))
            .and_then(|c| c.get("schema"));
        match (schema, body.is_empty()) {
            (Some(_), true) => out.push(format!("status {status}: the body is empty")),
            (None, false) => out.push(format!(
                "status {status}: the spec declares no body, but one was sent"
            )),
            (Some(schema), false) => match serde_json::from_slice::<Value>(body) {
                Ok(v) => self.check_value(schema, &v, &format!("status {status} body"), &mut out),
                Err(e) => out.push(format!("status {status}: the body is not JSON: {e}")),
            },
            (None, true) => {}
        }
        out
    }

    /// Flattens `$ref`, `allOf`, `anyOf`, `oneOf` into the schemas that
    /// constrain the value directly.
    fn leaves<'a>(&'a self, schema: &'a Value, out: &mut Vec<&'a Value>, depth: u32) {
        if depth > 32 {
            return;
        }
        let schema = self.resolve(schema);
        let mut combinator = false;
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(list) = schema.get(key).and_then(Value::as_array) {
                combinator = true;
                for s in list {
                    self.leaves(s, out, depth + 1);
                }
            }
        }
        let own_constraints = schema.as_object().is_some_and(|m| {
            m.keys()
                .any(|k| !matches!(k.as_str(), "allOf" | "anyOf" | "oneOf") && !is_annotation(k))
        });
        if !combinator || own_constraints {
            out.push(schema);
        }
    }

    fn undeclared(&self, schemas: &[&Value], instance: &Value, path: &str, out: &mut Vec<String>) {
        let mut leaves = Vec::new();
        for s in schemas {
            self.leaves(s, &mut leaves, 0);
        }
        match instance {
            Value::Object(map) => {
                let open = leaves.iter().any(|l| {
                    let m = l.as_object();
                    let empty = m.is_some_and(|m| m.keys().all(|k| is_annotation(k)));
                    let additional = l
                        .get("additionalProperties")
                        .is_some_and(|a| a != &Value::Bool(false));
                    let free_object = l.get("properties").is_none()
                        && l.get("type").and_then(Value::as_str) == Some("object");
                    empty || additional || free_object
                });
                let declaring: Vec<&Map<String, Value>> = leaves
                    .iter()
                    .filter_map(|l| l.get("properties").and_then(Value::as_object))
                    .collect();
                for (k, v) in map {
                    let subs: Vec<&Value> = declaring.iter().filter_map(|p| p.get(k)).collect();
                    let here = format!("{path}/{k}");
                    if subs.is_empty() {
                        if !open && !declaring.is_empty() {
                            out.push(here);
                        }
                    } else {
                        self.undeclared(&subs, v, &here, out);
                    }
                }
            }
            Value::Array(items) => {
                let subs: Vec<&Value> = leaves.iter().filter_map(|l| l.get("items")).collect();
                if !subs.is_empty() {
                    for (i, item) in items.iter().enumerate() {
                        self.undeclared(&subs, item, &format!("{path}/{i}"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

fn is_annotation(key: &str) -> bool {
    matches!(
        key,
        "description"
            | "example"
            | "examples"
            | "title"
            | "deprecated"
            | "readOnly"
            | "writeOnly"
            | "default"
            | "externalDocs"
            | "discriminator"
    ) || key.starts_with("x-")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query, path and header values are strings on the wire; the schema says
/// what they mean.
fn coerce(raw: &str, schema: &Value) -> Value {
    match schema.get("type") {
        Some(Value::String(t)) if t == "integer" => raw
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(raw.to_owned())),
        Some(Value::String(t)) if t == "boolean" => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw.to_owned()),
        },
        _ => Value::String(raw.to_owned()),
    }
}

/// OpenAPI 3.0 `nullable: true` → a JSON Schema `null` alternative.
fn openapi_to_json_schema(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(openapi_to_json_schema),
        Value::Object(map) => {
            for (_, child) in map.iter_mut() {
                openapi_to_json_schema(child);
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                if let Some(Value::Array(e)) = map.get_mut("enum") {
                    e.push(Value::Null);
                }
                match map.get("type").cloned() {
                    Some(Value::String(t)) => {
                        map.insert("type".into(), json!([t, "null"]));
                    }
                    _ => {
                        let inner = Value::Object(std::mem::take(map));
                        map.insert("anyOf".into(), json!([{ "type": "null" }, inner]));
                    }
                }
            }
        }
        _ => {}
    }
}

fn collect_operations(root: &Value) -> Result<Vec<Operation>, SpecError> {
    let resolve = |v: &Value| -> Value {
        let mut v = v.clone();
        for _ in 0..8 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                    Some(t) => v = t.clone(),
                    None => break,
                },
                None => break,
            }
        }
        v
    };
    let paths = root
        .get("paths")
        .and_then(Value::as_object)
        .ok_or_else(|| SpecError::Missing {
            what: "paths".into(),
        })?;
    let mut ops = Vec::new();
    for (template, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, op) in item {
            if !matches!(
                method.as_str(),
                "get" | "post" | "put" | "patch" | "delete" | "head"
            ) {
                continue;
            }
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .ok_or_else(|| SpecError::Missing {
                    what: format!("operationId of {method} {template}"),
                })?
                .to_owned();
            let segments = template
                .trim_start_matches('/')
                .split('/')
                .map(
                    |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => Segment::Param(name.to_owned()),
                        None => Segment::Literal(s.to_owned()),
                    },
                )
                .collect();
            let mut params = Vec::new();
            let all = item
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(
                    op.get("parameters")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
            for p in all {
                let p = resolve(p);
                params.push(Param {
                    name: p
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    location: p
                        .get("in")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                    schema: p.get("schema").cloned().unwrap_or_else(|| json!({})),
                });
            }
            let body = op.get("requestBody").map(|b| {
                let b = resolve(b);
                let required = b.get("required").and_then(Value::as_bool).unwrap_or(false);
                let schema = b
                    .pointer("/content/application~1json/schema")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                (required, schema)
            });
            let mut responses = HashMap::new();
            if let Some(rs) = op.get("responses").and_then(Value::as_object) {
                for (status, r) in rs {
                    responses.insert(status.clone(), resolve(r));
                }
            }
            ops.push(Operation {
                id,
                method: method.to_ascii_uppercase(),
                template: template.clone(),
                segments,
                params,
                body,
                responses,
            });
        }
    }
    if ops.is_empty() {
        return Err(SpecError::Missing {
            what: "operations".into(),
        });
    }
    Ok(ops)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn auth() -> Vec<(String, String)> {
        vec![
            ("authorization".into(), "Bearer t".into()),
            ("content-type".into(), "application/json".into()),
        ]
    }

    #[test]
    fn loads_all_operations() {
        let s = SpecValidator::load().unwrap();
        let ids = s.operation_ids();
        assert_eq!(ids.len(), 25, "{ids:?}");
        assert!(ids.contains(&"sshKeys_delete".to_owned()));
        assert!(ids.contains(&"images_get".to_owned()));
        assert!(ids.contains(&"delete_vpc".to_owned()));
        assert!(
            s.ops
                .iter()
                .any(|o| o.template == "/v2/droplets/{droplet_id}/actions")
        );
    }

    #[test]
    fn request_checks_catch_real_mistakes() {
        let s = SpecValidator::load().unwrap();
        let ok = s.check_request(
            "POST",
            "/v2/droplets",
            &[],
            &auth(),
            br#"{"names":["a","b"],"region":"nyc3","size":"s-1vcpu-1gb","image":"debian-12-x64","tags":["t"]}"#,
        );
        assert_eq!(ok.operation.as_deref(), Some("droplets_create"));
        assert!(ok.violations.is_empty(), "{:?}", ok.violations);

        // Missing required `size`, a misspelt field, a bad name: no branch
        // of the create's oneOf accepts it.
        let bad = s.check_request(
            "POST",
            "/v2/droplets",
            &[],
            &auth(),
            br#"{"name":"-bad_","region":"nyc3","image":"x","user_dat":"y"}"#,
        );
        let text = bad.violations.join("\n");
        assert!(text.contains("oneOf"), "{text}");
        assert!(text.contains("user_dat"), "{text}");
        let single = s.check_request(
            "POST",
            "/v2/droplets",
            &[],
            &auth(),
            br#"{"name":"-bad_","region":"nyc3","image":"debian-12-x64","size":"s"}"#,
        );
        assert!(
            !single.violations.is_empty(),
            "a name outside the pattern passed"
        );

        let q = s.check_request(
            "GET",
            "/v2/droplets",
            &[
                ("per_page".into(), "500".into()),
                ("tagname".into(), "x".into()),
            ],
            &auth(),
            b"",
        );
        let text = q.violations.join("\n");
        assert!(
            text.contains("per_page") && text.contains("tagname"),
            "{text}"
        );

        let noauth = s.check_request("GET", "/v2/account", &[], &[], b"");
        assert!(!noauth.violations.is_empty());
        let nomatch = s.check_request("GET", "/v2/volumes", &[], &auth(), b"");
        assert!(nomatch.operation.is_none());
        let uuid = s.check_request("GET", "/v2/vpcs/not-a-uuid", &[], &auth(), b"");
        assert!(!uuid.violations.is_empty());
    }

    #[test]
    fn response_checks_catch_drift() {
        let s = SpecValidator::load().unwrap();
        let h = vec![
            ("ratelimit-limit".to_owned(), "5000".to_owned()),
            ("ratelimit-remaining".to_owned(), "4999".to_owned()),
            ("ratelimit-reset".to_owned(), "1444931833".to_owned()),
        ];
        let ok = s.check_response(
            "droplets_list",
            200,
            &h,
            br#"{"droplets":[],"meta":{"total":0}}"#,
        );
        assert!(ok.is_empty(), "{ok:?}");
        // No meta, an invented field, a missing header.
        let bad = s.check_response(
            "droplets_list",
            200,
            &h[..2],
            br#"{"droplets":[],"private_ip":"x"}"#,
        );
        let text = bad.join("\n");
        assert!(
            text.contains("meta")
                && text.contains("private_ip")
                && text.contains("ratelimit-reset"),
            "{text}"
        );
        let err = s.check_response("droplets_get", 404, &h, br#"{"id":"not_found"}"#);
        assert!(err.join("\n").contains("message"), "{err:?}");
        let nobody = s.check_response("droplets_destroy", 204, &h, b"{}");
        assert!(!nobody.is_empty());
    }

    #[test]
    fn nullable_becomes_null_alternative() {
        let mut v = json!({"type": "string", "nullable": true, "enum": ["a"]});
        openapi_to_json_schema(&mut v);
        assert_eq!(v, json!({"type": ["string", "null"], "enum": ["a", null]}));
        let mut v = json!({"allOf": [{"type": "object"}], "nullable": true});
        openapi_to_json_schema(&mut v);
        assert_eq!(v["anyOf"][0], json!({"type": "null"}));
    }
}

//! Zero query ASTs (`zero-protocol/src/ast.ts`, protocol v51) parsed from their wire JSON.
//!
//! Parsing is strict, as Zero's valita schema is: unknown fields, wrong types and unknown
//! operators are errors, and every error names the offending path, e.g.
//! `where.conditions[1].op: unknown operator "LIKEX"`. Semantic checks against the replica's
//! tables (unknown table or column, type mismatches) happen when the AST is compiled
//! (`ivm::plan`).

use serde_json::{Map, Number, Value};

/// A query (or subquery).
#[derive(Debug, Clone, PartialEq)]
pub struct Ast {
    pub schema: Option<String>,
    pub table: String,
    pub alias: Option<String>,
    pub where_: Option<Condition>,
    pub related: Vec<CorrelatedSubquery>,
    pub start: Option<Bound>,
    pub limit: Option<u64>,
    pub order_by: Option<Vec<(String, Direction)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Asc,
    Desc,
}

/// `start`: the cursor row (only the columns given; the others count as NULL) and whether rows
/// equal to it are excluded.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    pub row: Map<String, Value>,
    pub exclusive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimpleOp {
    Eq,
    Ne,
    Is,
    IsNot,
    Lt,
    Gt,
    Le,
    Ge,
    Like,
    NotLike,
    ILike,
    NotILike,
    In,
    NotIn,
}

impl SimpleOp {
    fn parse(s: &str) -> Option<SimpleOp> {
        Some(match s {
            "=" => SimpleOp::Eq,
            "!=" => SimpleOp::Ne,
            "IS" => SimpleOp::Is,
            "IS NOT" => SimpleOp::IsNot,
            "<" => SimpleOp::Lt,
            ">" => SimpleOp::Gt,
            "<=" => SimpleOp::Le,
            ">=" => SimpleOp::Ge,
            "LIKE" => SimpleOp::Like,
            "NOT LIKE" => SimpleOp::NotLike,
            "ILIKE" => SimpleOp::ILike,
            "NOT ILIKE" => SimpleOp::NotILike,
            "IN" => SimpleOp::In,
            "NOT IN" => SimpleOp::NotIn,
            _ => return None,
        })
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SimpleOp::Eq => "=",
            SimpleOp::Ne => "!=",
            SimpleOp::Is => "IS",
            SimpleOp::IsNot => "IS NOT",
            SimpleOp::Lt => "<",
            SimpleOp::Gt => ">",
            SimpleOp::Le => "<=",
            SimpleOp::Ge => ">=",
            SimpleOp::Like => "LIKE",
            SimpleOp::NotLike => "NOT LIKE",
            SimpleOp::ILike => "ILIKE",
            SimpleOp::NotILike => "NOT ILIKE",
            SimpleOp::In => "IN",
            SimpleOp::NotIn => "NOT IN",
        }
    }
}

/// A literal value: `string | number | boolean | null | (string | number | boolean)[]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Literal>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValuePos {
    Column(String),
    Literal(Literal),
    /// A static parameter (`authData`, `preMutationRow`): the caller binds these before the
    /// engine sees the AST.
    Static {
        anchor: String,
        field: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Client,
    Permissions,
    Test,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CorrelatedSubquery {
    pub parent_field: Vec<String>,
    pub child_field: Vec<String>,
    pub subquery: Box<Ast>,
    pub system: Option<System>,
    pub hidden: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Simple {
        op: SimpleOp,
        left: ValuePos,
        right: ValuePos,
    },
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Exists {
        related: Box<CorrelatedSubquery>,
        not: bool,
        flip: bool,
        scalar: bool,
    },
}

/// A parse error: `path: problem`.
pub type ParseError = String;

fn err(path: &str, problem: impl std::fmt::Display) -> ParseError {
    if path.is_empty() {
        format!("{problem}")
    } else {
        format!("{path}: {problem}")
    }
}

fn field_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected(path: &str, what: &str, got: &Value) -> ParseError {
    err(path, format!("expected {what}, got {}", type_name(got)))
}

/// An object's fields, checked against the allowed names.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    fn new(value: &'a Value, path: &'a str, allowed: &[&str]) -> Result<Self, ParseError> {
        let map = value.as_object().ok_or_else(|| expected(path, "an object", value))?;
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(err(&field_path(path, key), "unknown field"));
            }
        }
        Ok(Fields { map, path })
    }

    /// A present, non-null field (`undefined` and `null` are both absent for optional fields,
    /// as JSON from JavaScript never carries `undefined`).
    fn opt(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn req(&self, name: &str) -> Result<&'a Value, ParseError> {
        self.map
            .get(name)
            .ok_or_else(|| err(&field_path(self.path, name), "missing"))
    }

    fn path(&self, name: &str) -> String {
        field_path(self.path, name)
    }

    fn string(&self, name: &str) -> Result<String, ParseError> {
        let v = self.req(name)?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| expected(&self.path(name), "a string", v))
    }

    fn opt_string(&self, name: &str) -> Result<Option<String>, ParseError> {
        self.opt(name)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| expected(&self.path(name), "a string", v))
            })
            .transpose()
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, ParseError> {
        self.opt(name)
            .map(|v| v.as_bool().ok_or_else(|| expected(&self.path(name), "a boolean", v)))
            .transpose()
    }
}

/// Parses an AST from its wire JSON text.
pub fn parse_ast_json(text: &str) -> Result<Ast, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    parse_ast(&value, "")
}

pub fn parse_ast(value: &Value, path: &str) -> Result<Ast, ParseError> {
    let f = Fields::new(
        value,
        path,
        &[
            "schema", "table", "alias", "where", "related", "start", "limit", "orderBy",
        ],
    )?;
    let table = f.string("table")?;
    let where_ = f
        .opt("where")
        .map(|w| parse_condition(w, &f.path("where")))
        .transpose()?;
    let related = match f.opt("related") {
        None => Vec::new(),
        Some(v) => {
            let p = f.path("related");
            let items = v.as_array().ok_or_else(|| expected(&p, "an array", v))?;
            items
                .iter()
                .enumerate()
                .map(|(i, r)| parse_csq(r, &format!("{p}[{i}]")))
                .collect::<Result<_, _>>()?
        }
    };
    let start = f.opt("start").map(|s| parse_bound(s, &f.path("start"))).transpose()?;
    let limit = match f.opt("limit") {
        None => None,
        Some(v) => {
            let p = f.path("limit");
            let n = v.as_number().ok_or_else(|| expected(&p, "a number", v))?;
            Some(as_count(n).ok_or_else(|| err(&p, format!("expected a non-negative integer, got {n}")))?)
        }
    };
    let order_by = f
        .opt("orderBy")
        .map(|o| parse_ordering(o, &f.path("orderBy")))
        .transpose()?;
    Ok(Ast {
        schema: f.opt_string("schema")?,
        table,
        alias: f.opt_string("alias")?,
        where_,
        related,
        start,
        limit,
        order_by,
    })
}

fn as_count(n: &Number) -> Option<u64> {
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f < 1.8e19).then_some(f as u64)
}

fn parse_ordering(value: &Value, path: &str) -> Result<Vec<(String, Direction)>, ParseError> {
    let items = value.as_array().ok_or_else(|| expected(path, "an array", value))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let p = format!("{path}[{i}]");
            let pair = item
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| expected(&p, "a [column, direction] pair", item))?;
            let column = pair[0]
                .as_str()
                .ok_or_else(|| expected(&format!("{p}[0]"), "a string", &pair[0]))?;
            let dir = match pair[1].as_str() {
                Some("asc") => Direction::Asc,
                Some("desc") => Direction::Desc,
                Some(other) => return Err(err(&format!("{p}[1]"), format!("unknown direction {other:?}"))),
                None => return Err(expected(&format!("{p}[1]"), "\"asc\" or \"desc\"", &pair[1])),
            };
            Ok((column.to_owned(), dir))
        })
        .collect()
}

fn parse_bound(value: &Value, path: &str) -> Result<Bound, ParseError> {
    let f = Fields::new(value, path, &["row", "exclusive"])?;
    let row_value = f.req("row")?;
    let row = row_value
        .as_object()
        .ok_or_else(|| expected(&f.path("row"), "an object", row_value))?
        .clone();
    let exclusive = f
        .opt_bool("exclusive")?
        .ok_or_else(|| err(&f.path("exclusive"), "missing"))?;
    Ok(Bound { row, exclusive })
}

fn parse_csq(value: &Value, path: &str) -> Result<CorrelatedSubquery, ParseError> {
    let f = Fields::new(value, path, &["correlation", "subquery", "system", "hidden"])?;
    let correlation = f.req("correlation")?;
    let cp = f.path("correlation");
    let c = Fields::new(correlation, &cp, &["parentField", "childField"])?;
    let keys = |name: &str| -> Result<Vec<String>, ParseError> {
        let p = c.path(name);
        let v = c.req(name)?;
        let items = v
            .as_array()
            .ok_or_else(|| expected(&p, "an array of column names", v))?;
        if items.is_empty() {
            return Err(err(&p, "expected at least one column"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| expected(&format!("{p}[{i}]"), "a string", s))
            })
            .collect()
    };
    let parent_field = keys("parentField")?;
    let child_field = keys("childField")?;
    if parent_field.len() != child_field.len() {
        return Err(err(
            &cp,
            format!(
                "parentField has {} columns, childField {}",
                parent_field.len(),
                child_field.len()
            ),
        ));
    }
    let system = match f.opt_string("system")? {
        None => None,
        Some(s) => Some(match s.as_str() {
            "client" => System::Client,
            "permissions" => System::Permissions,
            "test" => System::Test,
            other => return Err(err(&f.path("system"), format!("unknown system {other:?}"))),
        }),
    };
    let subquery = parse_ast(f.req("subquery")?, &f.path("subquery"))?;
    Ok(CorrelatedSubquery {
        parent_field,
        child_field,
        subquery: Box::new(subquery),
        system,
        hidden: f.opt_bool("hidden")?.unwrap_or(false),
    })
}

fn parse_condition(value: &Value, path: &str) -> Result<Condition, ParseError> {
    let kind = value
        .as_object()
        .ok_or_else(|| expected(path, "a condition object", value))?
        .get("type")
        .ok_or_else(|| err(&field_path(path, "type"), "missing"))?;
    match kind.as_str() {
        Some("simple") => {
            let f = Fields::new(value, path, &["type", "op", "left", "right"])?;
            let op_value = f.req("op")?;
            let op_text = op_value
                .as_str()
                .ok_or_else(|| expected(&f.path("op"), "an operator string", op_value))?;
            let op =
                SimpleOp::parse(op_text).ok_or_else(|| err(&f.path("op"), format!("unknown operator {op_text:?}")))?;
            let left = parse_value_pos(f.req("left")?, &f.path("left"))?;
            let right = parse_value_pos(f.req("right")?, &f.path("right"))?;
            if let ValuePos::Column(_) = right {
                return Err(err(
                    &f.path("right"),
                    "expected a literal or a static parameter, got a column",
                ));
            }
            Ok(Condition::Simple { op, left, right })
        }
        Some(t @ ("and" | "or")) => {
            let f = Fields::new(value, path, &["type", "conditions"])?;
            let p = f.path("conditions");
            let v = f.req("conditions")?;
            let items = v.as_array().ok_or_else(|| expected(&p, "an array", v))?;
            let conditions = items
                .iter()
                .enumerate()
                .map(|(i, c)| parse_condition(c, &format!("{p}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if t == "and" {
                Condition::And(conditions)
            } else {
                Condition::Or(conditions)
            })
        }
        Some("correlatedSubquery") => {
            let f = Fields::new(value, path, &["type", "related", "op", "flip", "scalar"])?;
            let op_value = f.req("op")?;
            let not = match op_value.as_str() {
                Some("EXISTS") => false,
                Some("NOT EXISTS") => true,
                Some(other) => return Err(err(&f.path("op"), format!("unknown operator {other:?}"))),
                None => return Err(expected(&f.path("op"), "\"EXISTS\" or \"NOT EXISTS\"", op_value)),
            };
            let related = parse_csq(f.req("related")?, &f.path("related"))?;
            Ok(Condition::Exists {
                related: Box::new(related),
                not,
                flip: f.opt_bool("flip")?.unwrap_or(false),
                scalar: f.opt_bool("scalar")?.unwrap_or(false),
            })
        }
        Some(other) => Err(err(
            &field_path(path, "type"),
            format!("unknown condition type {other:?}"),
        )),
        None => Err(expected(&field_path(path, "type"), "a string", kind)),
    }
}

fn parse_value_pos(value: &Value, path: &str) -> Result<ValuePos, ParseError> {
    let kind = value
        .as_object()
        .ok_or_else(|| expected(path, "a value object", value))?
        .get("type")
        .ok_or_else(|| err(&field_path(path, "type"), "missing"))?;
    match kind.as_str() {
        Some("column") => {
            let f = Fields::new(value, path, &["type", "name"])?;
            Ok(ValuePos::Column(f.string("name")?))
        }
        Some("literal") => {
            let f = Fields::new(value, path, &["type", "value"])?;
            let p = f.path("value");
            let v = f.req("value")?;
            let literal = match v {
                Value::Array(items) => Literal::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| match scalar_literal(item) {
                            Some(Literal::Null) | None => {
                                Err(expected(&format!("{p}[{i}]"), "a string, number or boolean", item))
                            }
                            Some(l) => Ok(l),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => scalar_literal(other)
                    .ok_or_else(|| expected(&p, "a string, number, boolean, null or array", other))?,
            };
            Ok(ValuePos::Literal(literal))
        }
        Some("static") => {
            let f = Fields::new(value, path, &["type", "anchor", "field"])?;
            let anchor = f.string("anchor")?;
            if anchor != "authData" && anchor != "preMutationRow" {
                return Err(err(&f.path("anchor"), format!("unknown anchor {anchor:?}")));
            }
            let fv = f.req("field")?;
            let field = match fv {
                Value::String(s) => vec![s.clone()],
                Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| expected(&f.path("field"), "strings", i))
                    })
                    .collect::<Result<_, _>>()?,
                other => return Err(expected(&f.path("field"), "a string or an array of strings", other)),
            };
            Ok(ValuePos::Static { anchor, field })
        }
        Some(other) => Err(err(&field_path(path, "type"), format!("unknown value type {other:?}"))),
        None => Err(expected(&field_path(path, "type"), "a string", kind)),
    }
}

fn scalar_literal(v: &Value) -> Option<Literal> {
    Some(match v {
        Value::Null => Literal::Null,
        Value::Bool(b) => Literal::Bool(*b),
        Value::Number(n) => Literal::Number(n.clone()),
        Value::String(s) => Literal::String(s.clone()),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Ast, ParseError> {
        parse_ast_json(text)
    }

    #[test]
    fn parses_the_captured_examples() {
        let ast = parse(
            r#"{"table":"file","where":{"type":"or","conditions":[
              {"type":"simple","left":{"type":"column","name":"name"},"right":{"type":"literal","value":"b%"},"op":"LIKE"},
              {"type":"correlatedSubquery","related":{"system":"client","correlation":{"parentField":["owner_id"],"childField":["id"]},
                "subquery":{"table":"user","alias":"zsubq_owner","where":{"type":"simple","left":{"type":"column","name":"name"},"right":{"type":"literal","value":"Bob"},"op":"="}}},
               "op":"EXISTS"}]},
             "limit":10,"orderBy":[["id","desc"]]}"#,
        )
        .unwrap();
        assert_eq!(ast.table, "file");
        assert_eq!(ast.limit, Some(10));
        assert_eq!(ast.order_by, Some(vec![("id".to_owned(), Direction::Desc)]));
        let Some(Condition::Or(conditions)) = &ast.where_ else {
            panic!("{ast:?}")
        };
        assert!(matches!(&conditions[0], Condition::Simple { op: SimpleOp::Like, .. }));
        let Condition::Exists {
            related, not: false, ..
        } = &conditions[1]
        else {
            panic!()
        };
        assert_eq!(related.subquery.alias.as_deref(), Some("zsubq_owner"));
        assert_eq!(related.system, Some(System::Client));

        let ast = parse(
            r#"{"table":"file","where":{"type":"simple","left":{"type":"column","name":"id"},"right":{"type":"literal","value":"f1"},"op":"="},
             "related":[{"correlation":{"parentField":["owner_id"],"childField":["id"]},"subquery":{"table":"user","alias":"owner"},"system":"client"}],
             "limit":1,"start":{"row":{"id":"f0"},"exclusive":true}}"#,
        )
        .unwrap();
        assert_eq!(ast.related.len(), 1);
        assert_eq!(ast.related[0].parent_field, ["owner_id"]);
        assert!(ast.start.unwrap().exclusive);
    }

    #[test]
    fn errors_name_the_path() {
        let e = parse(
            r#"{"table":"t","where":{"type":"and","conditions":[
              {"type":"simple","op":"=","left":{"type":"column","name":"a"},"right":{"type":"literal","value":1}},
              {"type":"simple","op":"LIKEX","left":{"type":"column","name":"a"},"right":{"type":"literal","value":1}}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e, r#"where.conditions[1].op: unknown operator "LIKEX""#);
        assert_eq!(parse(r#"{"table":"t","bogus":1}"#).unwrap_err(), "bogus: unknown field");
        assert_eq!(parse(r#"{"tabel":"t"}"#).unwrap_err(), "tabel: unknown field");
        assert_eq!(parse(r#"{"limit":1}"#).unwrap_err(), "table: missing");
        assert_eq!(
            parse(r#"{"table":5}"#).unwrap_err(),
            "table: expected a string, got a number"
        );
        assert_eq!(
            parse(r#"{"table":"t","limit":-1}"#).unwrap_err(),
            "limit: expected a non-negative integer, got -1"
        );
        assert_eq!(
            parse(r#"{"table":"t","limit":1.5}"#).unwrap_err(),
            "limit: expected a non-negative integer, got 1.5"
        );
        assert_eq!(
            parse(r#"{"table":"t","orderBy":[["a","up"]]}"#).unwrap_err(),
            r#"orderBy[0][1]: unknown direction "up""#
        );
        assert_eq!(
            parse(r#"{"table":"t","related":[{"correlation":{"parentField":["a"],"childField":["b"]},"subquery":{"table":"u","x":1}}]}"#)
                .unwrap_err(),
            "related[0].subquery.x: unknown field"
        );
        assert_eq!(
            parse(r#"{"table":"t","related":[{"correlation":{"parentField":["a","b"],"childField":["b"]},"subquery":{"table":"u"}}]}"#)
                .unwrap_err(),
            "related[0].correlation: parentField has 2 columns, childField 1"
        );
        assert_eq!(
            parse(r#"{"table":"t","where":{"type":"simple","op":"=","left":{"type":"column","name":"a"},"right":{"type":"column","name":"b"}}}"#)
                .unwrap_err(),
            "where.right: expected a literal or a static parameter, got a column"
        );
        assert_eq!(
            parse(r#"{"table":"t","where":{"type":"simple","op":"IN","left":{"type":"column","name":"a"},"right":{"type":"literal","value":[1,null]}}}"#)
                .unwrap_err(),
            "where.right.value[1]: expected a string, number or boolean, got null"
        );
        assert_eq!(
            parse(r#"{"table":"t","where":{"type":"not","conditions":[]}}"#).unwrap_err(),
            r#"where.type: unknown condition type "not""#
        );
        assert_eq!(
            parse(r#"{"table":"t","where":{"type":"correlatedSubquery","op":"EXIST","related":{}}}"#).unwrap_err(),
            r#"where.op: unknown operator "EXIST""#
        );
        assert_eq!(
            parse(r#"{"table":"t","start":{"row":{}}}"#).unwrap_err(),
            "start.exclusive: missing"
        );
        assert!(parse("[").unwrap_err().starts_with("not JSON"));
    }

    #[test]
    fn static_parameters_parse() {
        let ast = parse(
            r#"{"table":"t","where":{"type":"simple","op":"=","left":{"type":"column","name":"a"},"right":{"type":"static","anchor":"authData","field":"sub"}}}"#,
        )
        .unwrap();
        let Some(Condition::Simple {
            right: ValuePos::Static { anchor, field },
            ..
        }) = ast.where_
        else {
            panic!()
        };
        assert_eq!(anchor, "authData");
        assert_eq!(field, ["sub"]);
    }

    #[test]
    fn null_optionals_are_absent() {
        let ast = parse(r#"{"table":"t","alias":null,"where":null,"limit":null}"#).unwrap();
        assert_eq!(ast.alias, None);
        assert_eq!(ast.where_, None);
        assert_eq!(ast.limit, None);
    }
}

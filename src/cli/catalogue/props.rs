//! Property test of `catalogue import` over generated descriptions: path keys and server URLs
//! drawn from an alphabet of separators, parameters, dots and junk, operations and responses
//! of right and wrong types. No input panics; every route emitted comes from a spec path that
//! starts with `/` and is itself an absolute path; a spec with a path key that is not absolute
//! is refused, naming it.

use proptest::prelude::*;

use super::*;

fn path_key() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("pets".to_owned()),
        Just("{id}".to_owned()),
        Just("{a}.json".to_owned()),
        Just("..".to_owned()),
        Just(":".to_owned()),
        Just("noslash:".to_owned()),
        Just("~".to_owned()),
        Just("".to_owned()),
    ];
    proptest::collection::vec(piece, 0..5).prop_map(|v| v.concat())
}

fn operation() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!({"operationId": "op", "tags": ["t"]})),
        Just(serde_json::json!({"responses": {"200": {"description": "ok"}}})),
        Just(serde_json::json!({"responses": 5})),
        Just(serde_json::json!(5)),
        Just(serde_json::json!("get")),
        Just(serde_json::json!({"security": [{"oauth": ["read:pets"]}]})),
    ]
}

fn description() -> impl Strategy<Value = serde_json::Value> {
    let server = prop_oneof![
        Just(None),
        Just(Some("https://api.example.com/v1".to_owned())),
        Just(Some("v2".to_owned())),
        Just(Some("/".to_owned())),
    ];
    (
        server,
        proptest::collection::vec((path_key(), prop_oneof![Just("get"), Just("post"), Just("delete")], operation()), 0..6),
    )
        .prop_map(|(server, paths)| {
            let mut map = serde_json::Map::new();
            for (key, method, op) in paths {
                let item = map.entry(key).or_insert_with(|| serde_json::json!({}));
                if let Some(obj) = item.as_object_mut() {
                    obj.insert(method.to_owned(), op);
                }
            }
            let mut spec = serde_json::json!({"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": map});
            if let Some(url) = server {
                spec["servers"] = serde_json::json!([{ "url": url }]);
            }
            spec
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn imports_never_invent_a_path(spec in description()) {
        let text = spec.to_string();
        let parsed = spec::parse(Input::Json(Box::new(text.as_bytes())));
        let keys: Vec<String> = spec["paths"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        match parsed {
            Err(e) => prop_assert!(e.starts_with("at /"), "{e}"),
            Ok(s) => {
                prop_assert!(keys.iter().all(|k| k.starts_with('/')), "accepted {keys:?}");
                let (routes, _) = routes(&s, None, "x-sidekey-permission");
                for r in routes {
                    prop_assert!(r.template.starts_with('/'), "{}", r.template);
                    // Every route comes from a path key (after the server's base path).
                    let from_a_key = keys.iter().any(|k| {
                        let last = k.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
                        last.is_empty() || r.template.ends_with(last) || r.template.ends_with('}')
                    });
                    prop_assert!(from_a_key, "{} from {keys:?}", r.template);
                }
            }
        }
        // A key that is not absolute is always refused, with its pointer.
        if let Some(bad) = keys.iter().find(|k| !k.starts_with('/')) {
            let e = spec::parse(Input::Json(Box::new(text.as_bytes()))).err().unwrap_or_default();
            prop_assert!(e.contains("must start with `/`") || e.contains("invalid type"), "{bad}: {e}");
        }
    }
}

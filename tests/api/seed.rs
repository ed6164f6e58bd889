//! A new database is usable at once: three API standards and five `_system` definitions with
//! the exact values the migrations seed (the providers' published endpoints, models and sizes).

use llm_registry::pb::v1 as pb;

use crate::helpers::{TestApp, authed};

/// name, api_standard, endpoint, model, dimensions, context_limit
type DefinitionRow<'a> = (String, &'a str, &'a str, &'a str, Option<i32>, Option<i32>);

#[tokio::test]
async fn new_database_holds_the_seeded_standards_and_system_definitions() {
    let app = TestApp::spawn().await;
    let token = app.create_user("reader").await;

    let standards = app
        .standards()
        .list_api_standards(authed(pb::ListApiStandardsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .api_standards;
    let got: Vec<(&str, &str, &str)> = standards
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.auth_header.as_str(),
                s.auth_scheme.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("apiStandards/cohere", "Authorization", "Bearer"),
            ("apiStandards/gemini", "x-goog-api-key", ""),
            ("apiStandards/openai", "Authorization", "Bearer"),
        ]
    );

    let definitions = app
        .definitions()
        .list_definitions(authed(
            pb::ListDefinitionsRequest {
                parent: "users/_system".to_owned(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .definitions;
    let got: Vec<DefinitionRow> = definitions
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                d.api_standard.as_str(),
                d.endpoint.as_str(),
                d.model.as_str(),
                d.dimensions,
                d.context_limit,
            )
        })
        .collect();
    let expected = [
        (
            "cohere-multilingual-v3",
            "apiStandards/cohere",
            "https://api.cohere.com/v2/embed",
            "embed-multilingual-v3.0",
            1024,
            512,
        ),
        (
            "cohere-v4",
            "apiStandards/cohere",
            "https://api.cohere.com/v2/embed",
            "embed-v4.0",
            1536,
            128000,
        ),
        (
            "gemini-embedding-001",
            "apiStandards/gemini",
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:embedContent",
            "gemini-embedding-001",
            3072,
            2048,
        ),
        (
            "openai-large",
            "apiStandards/openai",
            "https://api.openai.com/v1/embeddings",
            "text-embedding-3-large",
            3072,
            8192,
        ),
        (
            "openai-small",
            "apiStandards/openai",
            "https://api.openai.com/v1/embeddings",
            "text-embedding-3-small",
            1536,
            8191,
        ),
    ];
    let expected: Vec<DefinitionRow> = expected
        .iter()
        .map(|(h, s, e, m, d, c)| {
            (
                format!("users/_system/definitions/{h}"),
                *s,
                *e,
                *m,
                Some(*d),
                Some(*c),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(
        definitions
            .iter()
            .all(|d| !d.etag.is_empty() && d.create_time.is_some())
    );
}

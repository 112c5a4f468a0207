//! `GET /api/v1/openapi.json`: an OpenAPI 3 description of the API, for API fuzzers
//! (`integration-tests/fuzz/run.sh` runs schemathesis against it) and for people writing other
//! clients. It needs no token, like `/health`: it describes the routes, not anyone's data.
//!
//! The description is a hand-written file (`openapi.json`) embedded at build time; the route
//! table in `jewel_wire`'s docs stays the authority, and the fuzz run fails when the two
//! disagree in a way the service notices (a 5xx, or an answer not matching its schema).

use axum::http::header;
use axum::response::IntoResponse;

/// The description, as served.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_description_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for route in [
            "/me",
            "/nodes/{id}",
            "/nodes/{id}/children",
            "/nodes/{id}/children/{name}",
            "/lookup",
            "/nodes",
            "/nodes/{id}/content",
            "/nodes/{id}/move",
            "/nodes/{id}/versions",
            "/nodes/{id}/versions/{version}/restore",
            "/trash",
            "/trash/{id}/restore",
            "/devices",
            "/changes",
            "/devices/{id}/poll",
            "/devices/{id}/listen",
            "/devices/{id}",
            "/links",
            "/links/{code}",
            "/links/{code}/approve",
            "/blocks/missing",
            "/blocks/urls",
        ] {
            let full = format!("{}{route}", jewel_wire::API_PREFIX);
            assert!(paths.contains_key(&full), "{full} is not described");
        }
    }
}

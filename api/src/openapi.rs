//! The OpenAPI description (`/openapi.json`) and a browsable UI (`/docs`).

use axum::{Router, routing::get};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_scalar::{Scalar, Servable};

use crate::{handlers, state::AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "ClickNBack API", description = "Cashback rewards: merchants report purchases, shoppers earn and withdraw cashback."),
    paths(
        handlers::health::healthz,
        handlers::health::readyz,
        handlers::health::metrics,
        handlers::auth::register,
        handlers::auth::login,
        handlers::auth::me,
        handlers::me::wallet,
        handlers::me::purchases,
        handlers::me::transactions,
        handlers::me::stats,
        handlers::payouts::create,
        handlers::payouts::list,
        handlers::payouts::get,
        handlers::track::click,
        handlers::track::identify,
        handlers::track::purchase,
        handlers::webhooks::purchase,
        handlers::webhooks::purchase_status,
        handlers::admin::merchants::create,
        handlers::admin::merchants::list,
        handlers::admin::merchants::get,
        handlers::admin::merchants::update,
        handlers::admin::merchants::suspend,
        handlers::admin::merchants::reactivate,
        handlers::admin::merchants::rotate_secret,
        handlers::admin::offers::create,
        handlers::admin::offers::list,
        handlers::admin::offers::get,
        handlers::admin::offers::update,
        handlers::admin::offers::activate,
        handlers::admin::offers::deactivate,
        handlers::admin::audit::list,
        handlers::admin::purchases::list,
        handlers::admin::purchases::approve,
        handlers::admin::purchases::reject,
        handlers::admin::purchases::link_stats,
        handlers::admin::jobs::queues,
        handlers::admin::jobs::jobs,
        handlers::admin::jobs::job,
        handlers::admin::jobs::workers,
        handlers::admin::jobs::requeue_dead,
        handlers::admin::jobs::requeue_all,
        handlers::admin::jobs::delete,
        handlers::admin::jobs::pause,
        handlers::admin::jobs::resume,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "webhooks", description = "Signed server-to-server calls from merchants"),
        (name = "auth", description = "Accounts and tokens"),
        (name = "sdk", description = "Tracking from the shopper's browser (publishable key)"),
        (name = "me", description = "The shopper's own data"),
        (name = "admin", description = "Merchants, offers and the audit log (admin token)"),
        (name = "jobs", description = "The job system: queues, dead jobs, workers (admin token)"),
        (name = "ops", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { axum::Json(ApiDoc::openapi()) }),
        )
        .merge(Scalar::with_url("/docs", ApiDoc::openapi()))
}

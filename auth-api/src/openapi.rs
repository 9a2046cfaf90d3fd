//! The OpenAPI 3 document served at `/api/openapi.json`, generated from the
//! handlers' annotations and the body types.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::model::{
    AuthResponse, CreateInvite, CreateRoom, Credentials, EditMessage, Invite, JoinRoom, Member,
    MemberList, Message, MessagePage, Reaction, Role, Room, RoomList, SearchPage,
    SubscriptionToken, User, Visibility,
};
use crate::model::{CreateDm, MarkRead, ReadList, ReadReceipt, SetRole};

/// Adds the bearer-token security scheme the paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("JWT".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

/// Adds the answers any route may give to every operation that does not list
/// them: 503 (database unavailable or too slow, request timeout) everywhere,
/// and 400, 413 and 422 where there is a request body.
struct CommonErrors;

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                let mut common = vec![(
                    "503",
                    "The database is unavailable or too slow, or the request timed out (`unavailable`, `timeout`); see `Retry-After`",
                )];
                if op.request_body.is_some() {
                    common.push(("400", "Malformed JSON (`invalid_json`)"));
                    common.push(("413", "Body over 64 KiB (`payload_too_large`)"));
                    common.push((
                        "422",
                        "Well-formed JSON of the wrong shape (`invalid_body`)",
                    ));
                }
                for (status, description) in common {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confab REST API",
        description = "Accounts, rooms, invites, history, message changes, search and subscription tokens. Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        crate::auth::register,
        crate::auth::login,
        crate::auth::me,
        crate::rooms::create_room,
        crate::rooms::list_rooms,
        crate::rooms::get_room,
        crate::rooms::join_room,
        crate::rooms::leave_room,
        crate::rooms::invite,
        crate::rooms::members,
        crate::history::messages,
        crate::history::subscription_token,
        crate::people::open_dm,
        crate::people::mark_read,
        crate::people::reads,
        crate::people::set_role,
        crate::people::kick,
        crate::people::ban,
        crate::people::unban,
        crate::messages::edit,
        crate::messages::delete,
        crate::messages::react,
        crate::messages::unreact,
        crate::search::search,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, User, Credentials, AuthResponse, Visibility, CreateRoom, Room,
        RoomList, JoinRoom, CreateInvite, Invite, Role, Member, MemberList, Message, Reaction,
        MessagePage, EditMessage, SearchPage, SubscriptionToken, CreateDm, MarkRead, ReadReceipt,
        ReadList, SetRole
    )),
    modifiers(&BearerAuth, &CommonErrors),
    tags(
        (name = "auth", description = "Accounts and access tokens"),
        (name = "rooms", description = "Rooms, membership and invites"),
        (name = "history", description = "Room history and subscription tokens"),
        (name = "people", description = "Direct rooms, read positions, roles, kicks and bans"),
        (name = "messages", description = "Editing, deleting and reacting to messages, and search"),
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_describes_bodies_and_auth() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let join = &doc["paths"]["/api/rooms/{id}/join"]["post"];
        assert_ne!(
            join["requestBody"]["required"], true,
            "join body is optional"
        );
        assert_eq!(
            doc["paths"]["/api/auth/register"]["post"]["requestBody"]["required"],
            true
        );
        assert!(doc["paths"]["/api/auth/login"]["post"]["security"].is_null());
        assert!(doc["paths"]["/api/me"]["get"]["security"].is_array());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let page = &doc["components"]["schemas"]["MessagePage"]["properties"];
        assert_eq!(page["next_before"]["type"][1], "null");
        // The room list pages: `limit`, `after` and `member` in, `next_after` out.
        let params: Vec<&str> = doc["paths"]["/api/rooms"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, ["limit", "after", "member"]);
        let list = &doc["components"]["schemas"]["RoomList"]["properties"];
        assert_eq!(list["next_after"]["type"][1], "null");
        assert!(list["rooms"].is_object());
    }
}

//! The OpenAPI 3 document served at `/api/openapi.json`, generated from the
//! handlers' annotations and the body types.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::model::{
    AuthResponse, CreateInvite, CreateRoom, Credentials, Invite, JoinRoom, Member, MemberList,
    Message, MessageKind, MessagePage, Role, Room, RoomList, SubscriptionToken, User, Visibility,
};

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

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confab REST API",
        description = "Accounts, rooms, invites, history and subscription tokens. Errors are `{\"error\": {\"code\", \"message\"}}`."
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
    ),
    components(schemas(
        ErrorBody, ErrorDetail, User, Credentials, AuthResponse, Visibility, CreateRoom, Room,
        RoomList, JoinRoom, CreateInvite, Invite, Role, Member, MemberList, MessageKind, Message,
        MessagePage, SubscriptionToken
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and access tokens"),
        (name = "rooms", description = "Rooms, membership and invites"),
        (name = "history", description = "Room history and subscription tokens"),
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
    }
}

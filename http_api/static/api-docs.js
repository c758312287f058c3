// Renders openapi.json (next to this page) with Swagger UI, whose files this server serves
// from the swagger-ui-py package: nothing is loaded from elsewhere. validatorUrl: null keeps
// Swagger UI from sending the description to validator.swagger.io.
"use strict";
window.ui = SwaggerUIBundle({ url: "openapi.json", dom_id: "#docs", validatorUrl: null, deepLinking: true });

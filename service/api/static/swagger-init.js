// Starts Swagger UI on the docs page. A file of its own, not a script in the page, so the
// page's content-security policy allows no inline script. The page names the document to
// load in this script's data-spec attribute.
"use strict";
(function () {
  const spec = document.currentScript.dataset.spec;
  window.ui = SwaggerUIBundle({
    url: spec,
    dom_id: "#swagger-container",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();

// Starts Swagger UI on /docs (a file, not an inline script: the Content-Security-Policy allows scripts from the service only).
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: new URL("openapi.json", document.baseURI).href,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null, // no request to the public validator
    presets: [SwaggerUIBundle.presets.apis],
  });
});

// Render the maths of every page with the vendored KaTeX (vendor/katex/), offline.
// pymdownx.arithmatex (generic mode) wraps each formula in an element of class
// "arithmatex": inline as \( ... \), display as \[ ... \].
function renderArithmatex(root) {
  root.querySelectorAll(".arithmatex").forEach((el) => {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
}

// mkdocs-material's document$ emits on the first load and after instant navigation.
if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => renderArithmatex(body));
} else {
  document.addEventListener("DOMContentLoaded", () => renderArithmatex(document.body));
}

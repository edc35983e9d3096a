// ESLint 9 flat config for linting one untrusted snippet read from stdin.
//
// Recommended rules only and no type-aware rules: a snippet has no tsconfig or project,
// and type-aware linting would cost seconds. The file must live next to the
// node_modules it imports (the sandbox binds this directory read-only), and the
// snippet's --stdin-filename must lie under this directory or ESLint ignores it.
import js from "@eslint/js";
import react from "eslint-plugin-react";
import globals from "globals";
import tseslint from "typescript-eslint";

const tsFiles = ["**/*.ts", "**/*.tsx", "**/*.mts", "**/*.cts"];
const jsxFiles = ["**/*.jsx", "**/*.tsx"];

export default [
  {
    files: ["**/*.js", "**/*.mjs", "**/*.cjs", "**/*.jsx", ...tsFiles],
    ...js.configs.recommended,
    languageOptions: {
      ecmaVersion: "latest",
      sourceType: "module",
      globals: { ...globals.node, ...globals.browser },
      parserOptions: { ecmaFeatures: { jsx: true } },
    },
  },
  ...tseslint.configs.recommended.map((config) => ({ ...config, files: tsFiles })),
  {
    // Without these, a component used only in JSX is reported as unused.
    files: jsxFiles,
    plugins: { react },
    settings: { react: { version: "19.3" } },
    rules: {
      "react/jsx-uses-vars": "error",
      "react/jsx-uses-react": "error",
    },
  },
];

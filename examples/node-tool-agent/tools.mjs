/**
 * The agent's tools: OpenAI function definitions plus their implementations.
 * Each implementation takes the parsed arguments and returns a JSON-able object.
 */

/**
 * Evaluates + - * / % ^ and parentheses on numbers, without eval().
 * Grammar: expr = term (('+'|'-') term)*; term = power (('*'|'/'|'%') power)*;
 *          power = unary ('^' power)?; unary = '-' unary | '+' unary | atom; atom = number | '(' expr ')'
 */
export function evaluate(expression) {
  const tokens = expression.match(/\d+(?:\.\d+)?|\.\d+|[-+*/%^()]|\S/g) ?? [];
  let pos = 0;
  const peek = () => tokens[pos];
  const take = (expected) => {
    const token = tokens[pos++];
    if (expected !== undefined && token !== expected) {
      throw new SyntaxError(`expected '${expected}' but found ${token === undefined ? 'the end' : `'${token}'`}`);
    }
    return token;
  };

  const expr = () => {
    let value = term();
    while (peek() === '+' || peek() === '-') value = take() === '+' ? value + term() : value - term();
    return value;
  };
  const term = () => {
    let value = power();
    while (peek() === '*' || peek() === '/' || peek() === '%') {
      const op = take();
      const rhs = power();
      if (op !== '*' && rhs === 0) throw new RangeError('division by zero');
      value = op === '*' ? value * rhs : op === '/' ? value / rhs : value % rhs;
    }
    return value;
  };
  const power = () => {
    const base = unary();
    return peek() === '^' ? (take(), base ** power()) : base;
  };
  const unary = () => {
    if (peek() === '-') return take(), -unary();
    if (peek() === '+') return take(), unary();
    return atom();
  };
  const atom = () => {
    const token = take();
    if (token === '(') {
      const value = expr();
      take(')');
      return value;
    }
    if (token !== undefined && /^(?:\d|\.\d)/.test(token)) return Number(token);
    throw new SyntaxError(token === undefined ? 'unexpected end of expression' : `unexpected '${token}'`);
  };

  const value = expr();
  if (pos < tokens.length) throw new SyntaxError(`unexpected '${tokens[pos]}'`);
  return value;
}

export const tools = {
  calculator: {
    definition: {
      type: 'function',
      function: {
        name: 'calculator',
        description: 'Evaluate an arithmetic expression with + - * / % ^ and parentheses.',
        parameters: {
          type: 'object',
          properties: { expression: { type: 'string', description: 'e.g. "(12.5 * 4) + 3^2"' } },
          required: ['expression'],
        },
      },
    },
    run: ({ expression }) => ({ expression, result: evaluate(String(expression)) }),
  },
  word_count: {
    definition: {
      type: 'function',
      function: {
        name: 'word_count',
        description: 'Count the words (and characters) of a text.',
        parameters: {
          type: 'object',
          properties: { text: { type: 'string', description: 'The text to count' } },
          required: ['text'],
        },
      },
    },
    run: ({ text }) => {
      const words = String(text).split(/\s+/).filter(Boolean);
      return { count: words.length, characters: String(text).length };
    },
  },
};

/** Run one tool call; errors become the tool's answer so the model can recover. */
export function runTool(name, rawArguments) {
  const tool = tools[name];
  if (!tool) return { error: `unknown tool '${name}'` };
  try {
    return tool.run(JSON.parse(rawArguments || '{}'));
  } catch (err) {
    return { error: `${err.name}: ${err.message}` };
  }
}

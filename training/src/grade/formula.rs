//! The `calculate_output` formula of a `multi` grader: `+ - * /`, parentheses, numbers, unary
//! minus, `min(..)`, `max(..)`, `abs(..)` over the sub-graders' names. Parsed once (recursive
//! descent) into a tree; never evaluated as code.

use std::collections::HashMap;

/// A parsed formula.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Formula {
    Number(f64),
    /// A sub-grader's score, by its index in the `multi` grader's list.
    Score(usize),
    Negate(Box<Formula>),
    Binary(Operator, Box<Formula>, Box<Formula>),
    Call(Function, Vec<Formula>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Operator {
    Add,
    Subtract,
    Multiply,
    Divide,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Function {
    Min,
    Max,
    Abs,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Name(String),
    Symbol(char),
}

/// Splits `text` into tokens with their character offsets.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let literal: String = chars[start..i].iter().collect();
            let value = literal
                .parse::<f64>()
                .map_err(|_| format!("bad number {literal:?} at column {}", start + 1))?;
            tokens.push((start, Token::Number(value)));
        } else if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push((start, Token::Name(chars[start..i].iter().collect())));
        } else if "+-*/(),".contains(c) {
            tokens.push((start, Token::Symbol(c)));
            i += 1;
        } else {
            return Err(format!("unexpected {c:?} at column {}", start + 1));
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    position: usize,
    names: &'a HashMap<String, usize>,
    length: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position).map(|(_, t)| t)
    }

    fn column(&self) -> usize {
        self.tokens
            .get(self.position)
            .map_or(self.length, |(offset, _)| *offset)
            + 1
    }

    fn eat(&mut self, symbol: char) -> bool {
        let found = self.peek() == Some(&Token::Symbol(symbol));
        self.position += usize::from(found);
        found
    }

    fn expect(&mut self, symbol: char) -> Result<(), String> {
        if self.eat(symbol) {
            Ok(())
        } else {
            Err(format!("expected {symbol:?} at column {}", self.column()))
        }
    }

    /// expression := term (("+" | "-") term)*
    fn expression(&mut self) -> Result<Formula, String> {
        let mut left = self.term()?;
        loop {
            let operator = if self.eat('+') {
                Operator::Add
            } else if self.eat('-') {
                Operator::Subtract
            } else {
                return Ok(left);
            };
            left = Formula::Binary(operator, Box::new(left), Box::new(self.term()?));
        }
    }

    /// term := unary (("*" | "/") unary)*
    fn term(&mut self) -> Result<Formula, String> {
        let mut left = self.unary()?;
        loop {
            let operator = if self.eat('*') {
                Operator::Multiply
            } else if self.eat('/') {
                Operator::Divide
            } else {
                return Ok(left);
            };
            left = Formula::Binary(operator, Box::new(left), Box::new(self.unary()?));
        }
    }

    /// unary := ("-" | "+") unary | primary
    fn unary(&mut self) -> Result<Formula, String> {
        if self.eat('-') {
            return Ok(Formula::Negate(Box::new(self.unary()?)));
        }
        if self.eat('+') {
            return self.unary();
        }
        self.primary()
    }

    /// primary := number | name | function "(" expression ("," expression)* ")" | "(" expression ")"
    fn primary(&mut self) -> Result<Formula, String> {
        let column = self.column();
        let token = self.tokens.get(self.position).map(|(_, t)| t.clone());
        self.position += 1;
        match token {
            Some(Token::Number(value)) => Ok(Formula::Number(value)),
            Some(Token::Symbol('(')) => {
                let inner = self.expression()?;
                self.expect(')')?;
                Ok(inner)
            }
            Some(Token::Name(name)) if self.peek() == Some(&Token::Symbol('(')) => self.call(&name, column),
            Some(Token::Name(name)) => match self.names.get(&name) {
                Some(index) => Ok(Formula::Score(*index)),
                None => Err(format!("unknown name {name:?} at column {column}; the graders are {}", self.known())),
            },
            Some(Token::Symbol(c)) => Err(format!("expected a number, a grader name or \"(\" at column {column}, found {c:?}")),
            None => Err(format!("the formula ends where a number, a grader name or \"(\" is expected (column {column})")),
        }
    }

    fn call(&mut self, name: &str, column: usize) -> Result<Formula, String> {
        let function = match name {
            "min" => Function::Min,
            "max" => Function::Max,
            "abs" => Function::Abs,
            _ => {
                return Err(format!(
                    "unknown function {name:?} at column {column}; expected min, max or abs"
                ))
            }
        };
        self.expect('(')?;
        let mut arguments = vec![self.expression()?];
        while self.eat(',') {
            arguments.push(self.expression()?);
        }
        self.expect(')')?;
        let fits = if function == Function::Abs {
            arguments.len() == 1
        } else {
            arguments.len() >= 2
        };
        if !fits {
            let wanted = if function == Function::Abs {
                "exactly 1 argument"
            } else {
                "at least 2 arguments"
            };
            return Err(format!(
                "{name}() at column {column} takes {wanted}, got {}",
                arguments.len()
            ));
        }
        Ok(Formula::Call(function, arguments))
    }

    fn known(&self) -> String {
        let mut names: Vec<&str> = self.names.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

impl Formula {
    /// Parses `text` over `names` (grader name → index); any syntax error or unknown name is an
    /// error with its column.
    pub(crate) fn parse(text: &str, names: &HashMap<String, usize>) -> Result<Formula, String> {
        let mut parser = Parser {
            tokens: tokenize(text)?,
            position: 0,
            names,
            length: text.chars().count(),
        };
        let formula = parser.expression()?;
        if parser.position < parser.tokens.len() {
            return Err(format!(
                "unexpected {:?} at column {}",
                parser.tokens[parser.position].1,
                parser.column()
            ));
        }
        Ok(formula)
    }

    /// The value for the sub-graders' `scores` (by index); division by zero is an error.
    pub(crate) fn evaluate(&self, scores: &[f64]) -> Result<f64, String> {
        Ok(match self {
            Formula::Number(value) => *value,
            Formula::Score(index) => scores[*index],
            Formula::Negate(inner) => -inner.evaluate(scores)?,
            Formula::Binary(operator, left, right) => {
                let (a, b) = (left.evaluate(scores)?, right.evaluate(scores)?);
                match operator {
                    Operator::Add => a + b,
                    Operator::Subtract => a - b,
                    Operator::Multiply => a * b,
                    Operator::Divide if b == 0.0 => {
                        return Err(format!("division by zero ({a} / 0)"))
                    }
                    Operator::Divide => a / b,
                }
            }
            Formula::Call(function, arguments) => {
                let values = arguments
                    .iter()
                    .map(|a| a.evaluate(scores))
                    .collect::<Result<Vec<_>, _>>()?;
                match function {
                    Function::Min => values.into_iter().fold(f64::INFINITY, f64::min),
                    Function::Max => values.into_iter().fold(f64::NEG_INFINITY, f64::max),
                    Function::Abs => values[0].abs(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HashMap<String, usize> {
        [
            ("a".to_owned(), 0),
            ("b".to_owned(), 1),
            ("c_2".to_owned(), 2),
        ]
        .into_iter()
        .collect()
    }

    fn value(text: &str, scores: &[f64]) -> f64 {
        Formula::parse(text, &names())
            .unwrap()
            .evaluate(scores)
            .unwrap()
    }

    #[test]
    fn precedence_unary_minus_and_functions() {
        let scores = [0.5, 0.25, 1.0];
        assert_eq!(value("a + b * 2", &scores), 1.0);
        assert_eq!(value("(a + b) * 2", &scores), 1.5);
        assert_eq!(value("a - b - c_2", &scores), -0.75, "left-associative");
        assert_eq!(value("c_2 / a / 4", &scores), 0.5, "left-associative");
        assert_eq!(value("-a + --b", &scores), -0.25);
        assert_eq!(value("min(a, b, c_2) + max(a, 0.75)", &scores), 1.0);
        assert_eq!(value("abs(b - a) * 4", &scores), 1.0);
        assert_eq!(value("0.5 * a + .5 * c_2", &scores), 0.75);
    }

    #[test]
    fn parse_errors_say_where() {
        let error = |text: &str| Formula::parse(text, &names()).unwrap_err();
        assert!(
            error("a + d").contains("unknown name \"d\" at column 5; the graders are a, b, c_2"),
            "{}",
            error("a + d")
        );
        assert!(error("a +").contains("ends"), "{}", error("a +"));
        assert!(
            error("a * * b").contains("column 5"),
            "{}",
            error("a * * b")
        );
        assert!(
            error("(a + b").contains("expected ')'"),
            "{}",
            error("(a + b")
        );
        assert!(error("a b").contains("unexpected"), "{}", error("a b"));
        assert!(error("sqrt(a)").contains("unknown function \"sqrt\""));
        assert!(error("abs(a, b)").contains("exactly 1 argument"));
        assert!(error("min(a)").contains("at least 2 arguments"));
        assert!(error("a ^ b").contains("unexpected '^' at column 3"));
        assert!(error("1.2.3").contains("bad number"));
        assert!(error("").contains("ends"));
        assert!(error("__import__").contains("unknown name"));
    }

    #[test]
    fn division_by_zero_is_an_error() {
        let formula = Formula::parse("a / (b - 0.25)", &names()).unwrap();
        assert!(formula
            .evaluate(&[1.0, 0.25, 0.0])
            .unwrap_err()
            .contains("division by zero"));
        assert_eq!(formula.evaluate(&[1.0, 0.75, 0.0]), Ok(2.0));
    }
}

//! What the attributes need to know about the function: that it is `async`, the names its
//! arguments bind, and what it returns.

use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Type};

/// The names templates may use: the arguments bound to a plain name, and `self` for methods.
pub(crate) struct Args {
    pub(crate) names: Vec<String>,
    pub(crate) receiver: bool,
}

impl Args {
    pub(crate) fn has(&self, name: &str) -> bool {
        (name == "self" && self.receiver) || self.names.iter().any(|n| n == name)
    }

    /// `a, b, self` for error messages.
    pub(crate) fn list(&self) -> String {
        let mut all: Vec<&str> = self.names.iter().map(String::as_str).collect();
        if self.receiver {
            all.insert(0, "self");
        }
        if all.is_empty() {
            "none".to_owned()
        } else {
            all.join(", ")
        }
    }
}

/// How the return type is cached.
pub(crate) enum Returns {
    /// `Result<T, E>` (or an alias named `Result`, like `io::Result<T>`): cached on `Ok`. `T` is
    /// the first type argument, when written.
    Result(Option<Type>),
    /// `Option<T>`: the whole option is the cached value.
    Option(Type),
    /// Any other `T`: always cached.
    Plain(Type),
}

impl Returns {
    /// The type of the value that is stored (what `unless` receives), if it can be named.
    pub(crate) fn stored(&self) -> Option<&Type> {
        match self {
            Returns::Result(t) => t.as_ref(),
            Returns::Option(t) | Returns::Plain(t) => Some(t),
        }
    }
}

pub(crate) struct Shape {
    pub(crate) args: Args,
    pub(crate) returns: Returns,
    /// The declared return type, as written.
    pub(crate) output: Type,
}

/// Checks that `f` is an `async fn` with a return type the attribute `macro_name` supports
/// (with `unit`, also none or `()`: `#[invalidates]` on a write that cannot fail).
pub(crate) fn analyse(f: &ItemFn, macro_name: &str, unit: bool) -> syn::Result<Shape> {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            format!(
                "#[{macro_name}] goes on an `async fn` (it awaits the cache): write `async fn {}`",
                sig.ident
            ),
        ));
    }
    let mut args = Args {
        names: Vec::new(),
        receiver: false,
    };
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(_) => args.receiver = true,
            FnArg::Typed(t) => {
                if let Pat::Ident(p) = &*t.pat {
                    args.names.push(p.ident.to_string());
                }
            }
        }
    }
    let unsupported = |at: &dyn ToTokens, what: &str| {
        syn::Error::new_spanned(
            at,
            format!(
                "#[{macro_name}] cannot cache {what}: return `Result<T, E>` (cached on `Ok`), \
                 `Option<T>` or a `T: Serialize + DeserializeOwned`"
            ),
        )
    };
    let output = match &sig.output {
        ReturnType::Default if unit => syn::parse_quote!(()),
        ReturnType::Default => {
            return Err(unsupported(&sig.ident, "a function that returns nothing"))
        }
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let returns = match classify(&output) {
        Ok(r) => r,
        // A write's result is not stored: any type the generated code can name will do.
        Err(_) if unit && !matches!(output, Type::ImplTrait(_) | Type::Infer(_)) => {
            Returns::Plain(output.clone())
        }
        Err(what) if unit => {
            return Err(syn::Error::new_spanned(
                &output,
                format!("#[{macro_name}] needs a return type it can name, not {what}"),
            ))
        }
        Err(what) => return Err(unsupported(&output, what)),
    };
    Ok(Shape {
        args,
        returns,
        output,
    })
}

fn classify(t: &Type) -> Result<Returns, &'static str> {
    match t {
        Type::Paren(p) => classify(&p.elem),
        Type::Group(g) => classify(&g.elem),
        Type::Tuple(t) if t.elems.is_empty() => Err("`()`"),
        Type::ImplTrait(_) => Err("an `impl Trait` (name the type)"),
        Type::Reference(_) => Err("a reference (return an owned value)"),
        Type::Ptr(_) => Err("a raw pointer"),
        Type::TraitObject(_) => Err("a trait object"),
        Type::Never(_) => Err("`!`"),
        Type::Infer(_) => Err("`_`"),
        Type::FnPtr(_) => Err("a function pointer"),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return Ok(Returns::Plain(t.clone()));
            };
            let first_type = match &last.arguments {
                PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
                    GenericArgument::Type(t) => Some(t.clone()),
                    _ => None,
                }),
                _ => None,
            };
            if last.ident == "Result" {
                Ok(Returns::Result(first_type))
            } else if last.ident == "Option" && first_type.is_some() {
                Ok(Returns::Option(t.clone()))
            } else {
                Ok(Returns::Plain(t.clone()))
            }
        }
        _ => Ok(Returns::Plain(t.clone())),
    }
}

use super::*;

#[test]
fn each_outbound_leg_id_routes_to_its_call_and_nothing_else_does() {
    let (tx, _rx) = mpsc::channel(1);
    let mut routes = HashMap::new();
    routes.insert("1.5".to_string(), (tx.clone(), Leg::Caller));
    routes.insert(callee_id("1.5"), (tx, Leg::Callee));
    let leg = |id: &str| lookup(&routes, id).map(|(_, l)| *l);
    assert_eq!(leg("1.5"), Some(Leg::Caller));
    assert_eq!(leg("1.5-out1"), Some(Leg::Callee));
    assert_eq!(leg("1.5-out12"), Some(Leg::Callee));
    assert_eq!(leg("1.5-outx"), None);
    assert_eq!(leg("1.6-out1"), None);
    assert_eq!(leg("1.5-media"), None);
}
